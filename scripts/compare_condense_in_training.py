"""Accuracy with and without condensing in place: the quickstart recipe (condensenet_mini on
Fashion-MNIST) trained masked to the end and condensed in training, 3 seeds each.

    python scripts/compare_condense_in_training.py --out runs/swap [--epochs 12] [--train-subset 60000]

Prints test top-1 (mean ± std) and the size of the last checkpoint. Runs are kept and resumed
as in study.py.
"""
from __future__ import annotations

import argparse
import json
import statistics

import study

ROWS = {
    "masked to the end": ["experiment=quickstart", "sparsity.condensenet.condense_in_training=false"],
    "condensed in training": ["experiment=quickstart", "sparsity.condensenet.condense_in_training=true",
                              "sparsity.condensenet.trainable_form=deployed"],
}


def run_facts(report: dict, run) -> dict:
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"train_s": sum(e["epoch_time"] for e in epochs),
            "checkpoint_bytes": (run / "checkpoints" / "last.pt").stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study.add_common_arguments(ap, len(ROWS), epochs=12, train_subset=60000)
    args = ap.parse_args()
    study.set_threads(args.threads)
    budget = {"epochs": args.epochs, "train_subset": args.train_subset}
    results = study.run_rows(args.out, study.select(ROWS, args.rows), args.seeds, budget, run_facts)
    print(f"\nFashion-MNIST, {args.epochs} epochs on {args.train_subset} training images, seeds {args.seeds}\n")
    # Training time is kept in result.json but not tabled: these runs share the machine with
    # others; bench_training_speed.py --wall times both kinds of run side by side.
    print(study.markdown_table(results, {"checkpoint_bytes": "last.pt bytes"}, "condensenet_mini"))
    accs = {label: [r["top1"] for r in runs] for label, runs in results.items()}
    if len(accs) == 2 and all(len(a) > 1 for a in accs.values()):
        (a, b) = accs.values()
        gap = abs(statistics.mean(a) - statistics.mean(b))
        spread = max(statistics.stdev(a), statistics.stdev(b))
        print(f"\ndifference of the means {gap:.2f} points; largest seed std {spread:.2f}: "
              f"{'within' if gap <= spread else 'outside'} the seeds' spread")


if __name__ == "__main__":
    main()
