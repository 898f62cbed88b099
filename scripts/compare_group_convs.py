"""Learned grouping (CondenseNet's LGC, FLGC, FLGC balanced) vs fixed groups (± shuffle) vs a
narrowed dense 1x1, at equal multiply-adds.

Trains each condensenet_mini variant on Fashion-MNIST for several seeds with the quickstart
recipe and prints a markdown table of test top-1 (mean ± std) with each model's deployed
multiply-adds. Learned variants train with their schedule and are measured after export
(FLGC with G = 4 groups reads about a quarter of each 1x1's inputs, as LGC's last stage does).

    python scripts/compare_group_convs.py [--seeds 0 1 2] [--epochs 4] [--train-subset 30000] [--out DIR]

With `--out DIR` each run keeps its folder (DIR/<row>/seed<k>): a finished run's result is
read back, an interrupted one resumes from its last checkpoint, so a long budget can be run
in pieces, or split over processes with `--variants` and printed whole by a last call.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import tempfile
from pathlib import Path

import torch

from learnsparse import train
from learnsparse.config_dir import compose
from learnsparse.export import condense, load_trained
from learnsparse.export.measure import macs_by_module

FLGC_1X1 = ["sparsity.flgc.groups=4", "sparsity.flgc.include=[*conv1]"]
VARIANTS = {  # label: (model, sparsity overrides)
    "learned group conv (CondenseNet)": ("condensenet_mini", ["sparsity=condensenet"]),
    "FLGC": ("condensenet_mini_plain", ["sparsity=flgc", *FLGC_1X1]),
    "FLGC balanced": ("condensenet_mini_plain", ["sparsity=flgc", *FLGC_1X1, "sparsity.flgc.balanced=true"]),
    "fixed group conv": ("condensenet_mini_fixed", ["sparsity=none"]),
    "fixed group conv + shuffle": ("condensenet_mini_shuffle", ["sparsity=none"]),
    "dense 1x1 (narrowed)": ("condensenet_mini_dense", ["sparsity=none"]),
}


def deployed_macs(trained: torch.nn.Module) -> int:
    """MACs of the exported model, the structure as trained (assignments as learned)."""
    x = torch.randn(1, 1, 28, 28)
    return macs_by_module(condense(trained.eval(), x), x)[""]


def run_once(label: str, model: str, sparsity: list[str], seed: int, args) -> tuple[float, int]:
    """Test top-1 and deployed MACs of one trained variant; kept in `--out` when given."""
    with (contextlib.nullcontext(args.out) if args.out else tempfile.TemporaryDirectory()) as root:
        out = Path(root) / re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") / f"seed{seed}"
        done = out / "result.json"
        budget = {"epochs": args.epochs, "train_subset": args.train_subset}
        if done.is_file() and json.loads(done.read_text())["budget"] == budget:
            result = json.loads(done.read_text())
            return result["top1"], result["macs"]
        cfg = compose(["experiment=quickstart", f"model.name={model}", *sparsity, f"seed={seed}",
                       f"trainer.epochs={args.epochs}", f"data.dataset.train_subset={args.train_subset}",
                       "logger=none", f"paths.output_dir={out}", "trainer.resume=auto"])
        top1 = train(cfg)["val_top1"]
        macs = deployed_macs(load_trained(f"{out}/checkpoints/last.pt"))
        done.write_text(json.dumps({"budget": budget, "top1": top1, "macs": macs}))
        return top1, macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-subset", type=int, default=30000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None,
                    help="keep each run here; finished runs are reused, interrupted ones resumed")
    ap.add_argument("--variants", nargs="+", choices=range(len(VARIANTS)), type=int, default=list(range(len(VARIANTS))),
                    help="which rows to run, in the order above (0 LGC, 1 FLGC, 2 FLGC balanced, 3 fixed, "
                         "4 fixed + shuffle, 5 dense)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for i, (label, (model, sparsity)) in enumerate(VARIANTS.items()):
        if i not in args.variants:
            continue
        accs, macs = [], []
        for seed in args.seeds:
            acc, mac = run_once(label, model, sparsity, seed, args)
            accs.append(acc)
            macs.append(mac)
            print(f"{label} seed {seed}: {acc:.2f} ({mac:,} MACs)", flush=True)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append((label, round(statistics.mean(macs)), statistics.mean(accs), std, accs))
    print(f"\nFashion-MNIST, {args.epochs} epochs on {args.train_subset} training images, seeds {args.seeds}\n")
    print("| 1x1 conv | deployed MACs / image (mean over seeds) | test top-1 % (mean ± std) | runs |")
    print("| --- | ---: | ---: | --- |")
    for label, macs, mean, std, accs in rows:
        print(f"| {label} | {macs:,} | {mean:.2f} ± {std:.2f} | {', '.join(f'{a:.2f}' for a in accs)} |")


if __name__ == "__main__":
    main()
