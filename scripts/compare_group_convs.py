"""Learned group conv vs fixed groups vs fixed groups + shuffle vs dense 1x1, at equal MACs.

Trains each condensenet_mini variant on Fashion-MNIST for several seeds with the quickstart
recipe and prints a markdown table of test top-1 (mean ± std) with each model's deployed
multiply-adds. The learned variant trains with the condensing schedule and is measured
after export (its deployed MACs equal the fixed variants').

    python scripts/compare_group_convs.py [--seeds 0 1 2] [--epochs 4] [--train-subset 30000]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from learnsparse import train
from learnsparse.config_dir import compose
from learnsparse.export import condense
from learnsparse.export.measure import macs_by_module
from learnsparse.models import create_model
from learnsparse.nn import LearnedGroupConv

VARIANTS = {
    "learned group conv (CondenseNet)": ("condensenet_mini", "condensenet"),
    "fixed group conv": ("condensenet_mini_fixed", "none"),
    "fixed group conv + shuffle": ("condensenet_mini_shuffle", "none"),
    "dense 1x1 (narrowed)": ("condensenet_mini_dense", "none"),
}


def deployed_macs(name: str) -> int:
    model = create_model(name, num_classes=10, in_channels=1).eval()
    for m in model.modules():
        if isinstance(m, LearnedGroupConv):
            m.condense_to(m.max_stage)
    x = torch.randn(1, 1, 28, 28)
    return macs_by_module(condense(model, x), x)[""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-subset", type=int, default=30000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", choices=range(len(VARIANTS)), type=int, default=list(range(len(VARIANTS))),
                    help="which rows to run (0 learned, 1 fixed, 2 fixed + shuffle, 3 dense)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for i, (label, (model, sparsity)) in enumerate(VARIANTS.items()):
        if i not in args.variants:
            continue
        accs = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as out:
                cfg = compose(["experiment=quickstart", f"model.name={model}", f"sparsity={sparsity}", f"seed={seed}",
                               f"trainer.epochs={args.epochs}", f"data.dataset.train_subset={args.train_subset}",
                               "logger=none", f"paths.output_dir={out}"])
                accs.append(train(cfg)["val_top1"])
            print(f"{label} seed {seed}: {accs[-1]:.2f}", flush=True)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append((label, deployed_macs(model), statistics.mean(accs), std, accs))
    print(f"\nFashion-MNIST, {args.epochs} epochs on {args.train_subset} training images, seeds {args.seeds}\n")
    print("| 1x1 conv | deployed MACs / image | test top-1 % (mean ± std) | runs |")
    print("| --- | ---: | ---: | --- |")
    for label, macs, mean, std, accs in rows:
        print(f"| {label} | {macs:,} | {mean:.2f} ± {std:.2f} | {', '.join(f'{a:.2f}' for a in accs)} |")


if __name__ == "__main__":
    main()
