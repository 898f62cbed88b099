"""Learned grouping (CondenseNet's LGC, FLGC, FLGC balanced) vs fixed groups (± shuffle) vs a
narrowed dense 1x1, at equal multiply-adds.

Trains each condensenet_mini variant on Fashion-MNIST for several seeds with the quickstart
recipe and prints a markdown table of test top-1 (mean ± std) with each model's deployed
multiply-adds. Learned variants train with their schedule and are measured after export
(FLGC with G = 4 groups reads about a quarter of each 1x1's inputs, as LGC's last stage does).

    python scripts/compare_group_convs.py --out runs/groups [--seeds 0 1 2] [--epochs 4] [--train-subset 30000]

Each run keeps its folder (<out>/<row>/seed<k>, see study.py): a finished run's result is read
back, an interrupted one resumes from its last checkpoint, so a long budget can be run in
pieces, or split over processes with `--rows` and printed whole by a last call.
"""
from __future__ import annotations

import argparse

import study

# Learned layers train masked to the end here: the comparison is of groupings, and the in-place
# swap (which gives the same network, verified) would only make some rows cheaper to train.
FLGC_1X1 = ["sparsity.flgc.groups=4", "sparsity.flgc.include=[*conv1]", "sparsity.flgc.condense_in_training=false"]
VARIANTS = {  # label: (model, sparsity overrides)
    "learned group conv (CondenseNet)": ("condensenet_mini", ["sparsity=condensenet",
                                                              "sparsity.condensenet.condense_in_training=false"]),
    "FLGC": ("condensenet_mini_plain", ["sparsity=flgc", *FLGC_1X1]),
    "FLGC balanced": ("condensenet_mini_plain", ["sparsity=flgc", *FLGC_1X1, "sparsity.flgc.balanced=true"]),
    "fixed group conv": ("condensenet_mini_fixed", ["sparsity=none"]),
    "fixed group conv + shuffle": ("condensenet_mini_shuffle", ["sparsity=none"]),
    "dense 1x1 (narrowed)": ("condensenet_mini_dense", ["sparsity=none"]),
}
ROWS = {label: ["experiment=quickstart", f"model.name={model}", *sparsity] for label, (model, sparsity) in VARIANTS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study.add_common_arguments(ap, len(ROWS), epochs=4, train_subset=30000)
    args = ap.parse_args()
    study.set_threads(args.threads)
    results = study.run_rows(args.out, study.select(ROWS, args.rows), args.seeds,
                             {"epochs": args.epochs, "train_subset": args.train_subset})
    print(f"\nFashion-MNIST, {args.epochs} epochs on {args.train_subset} training images, seeds {args.seeds}\n")
    print(study.markdown_table(results, {"macs": "deployed MACs / image (mean over seeds)"}, "1x1 conv"))


if __name__ == "__main__":
    main()
