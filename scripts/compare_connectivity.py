"""Structured sparse convolutions against each other on Fashion-MNIST, 3 seeds each.

    python scripts/compare_connectivity.py igc   --out runs/igc   [--epochs 4] [--train-subset 10000]
    python scripts/compare_connectivity.py lenet --out runs/lenet [--epochs 6] [--train-subset 60000]

`igc`: depth-8 ResNets at equal parameters (±5%): the regular-conv network 16 wide, IGC blocks
with M = 2, 4, 8 secondary partitions (as wide as the budget allows: 60, 52, 32), fixed
`groups=4` convs + channel shuffle (32 wide) and FLGC G = 4 balanced (32 wide, learned
grouping frozen at mid-training) — the IGC paper's claims are that wider is better at fixed
parameters and that M = 2 is best. The wide IGC networks train slowly on a CPU (grouped
convs with groups of 2–4 channels), hence the short default budget.

`lenet`: LeNet-5 (1998 layout) with C3 connected four ways at about equal conv MACs: fully, by
the 1998 table (60 of 96 connections), by SSL (group lasso on each 5x5 kernel, then the 36
weakest kernels thresholded and frozen: 60 kept), and by FLGC with G = 2 (48 connections).

Each run is exported (verified) and reports its deployed parameters, multiply-adds and the
multiply-adds of its kept connections; `--out` keeps the runs (see study.py), which
plot_tradeoff.py draws.
"""
from __future__ import annotations

import argparse

import study

RECIPE = ["data=fashion_mnist", "optim=sgd", "lr_scheduler=cosine", "optim.lr=0.1", "data.batch_size=128",
          "trainer.channels_last=true", "sparsity=none"]
# LeNet-5 at lr 0.1 diverged with FLGC on C3 (one seed of three: NaN at step 131): every
# LeNet row trains at 0.05 with gradients clipped at norm 5.
LENET = [*RECIPE, "optim.lr=0.05", "trainer.grad_clip=5.0"]


def _igc(L: int, M: int, conv: str = "igc") -> list[str]:
    return [*RECIPE, "model=igc_resnet", "model.depth=8", f"model.primary_groups={L}",
            f"model.secondary_groups={M}", f"model.conv={conv}"]


STUDIES = {
    "igc": {
        "regular conv (16 wide)": _igc(16, 1, "regular"),
        "IGC L=30 M=2 (60 wide)": _igc(30, 2),
        "IGC L=13 M=4 (52 wide)": _igc(13, 4),
        "IGC L=4 M=8 (32 wide)": _igc(4, 8),
        "fixed groups G=4 + shuffle (32 wide)": _igc(4, 8, "group_shuffle"),
        "FLGC G=4 balanced (32 wide)": [*_igc(32, 1, "regular"), "sparsity=flgc", "sparsity.flgc.groups=4",
                                        "sparsity.flgc.balanced=true", "sparsity.flgc.include=[*igc*]"],
    },
    "lenet": {
        "C3 fully connected": [*LENET, "model=lenet5_1998", "model.c3=full"],
        "C3 by the 1998 table": [*LENET, "model=lenet5_1998"],
        "C3 learned by SSL (60 kernels)": [
            *LENET, "model=lenet5_1998", "model.c3=full", "sparsity=[group_lasso,threshold]",
            "sparsity.group_lasso.kinds=[kernel2d]", "sparsity.group_lasso.include=[features.3]",
            "sparsity.group_lasso.strength=1e-3", "sparsity.group_lasso.until=0.5",
            "sparsity.threshold.kinds=[kernel2d]", "sparsity.threshold.include=[features.3]",
            "sparsity.threshold.rule=percentile", "sparsity.threshold.tau=0.375", "sparsity.threshold.at=0.5"],
        "C3 learned by FLGC G=2": [*LENET, "model=lenet5_1998", "model.c3=full", "sparsity=flgc",
                                   "sparsity.flgc.groups=2", "sparsity.flgc.include=[features.3]"],
    },
}
BUDGETS = {"igc": (4, 10000), "lenet": (6, 60000)}


def connection_macs(report: dict, run) -> dict:
    """Multiply-adds of the kept connections: what the zeros inside a deployed conv do not cost."""
    import torch

    from learnsparse.export import load
    from learnsparse.layers.connectivity import connectivity_of

    model = load(run / "export" / "condensed.pt").float()
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kept = int(connectivity_of(module).sum())
            total += kept * module.kernel_size[0] * module.kernel_size[1] * output.shape[-1] * output.shape[-2]
        elif isinstance(module, torch.nn.Linear):
            total += int(module.weight.ne(0).sum())

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.randn(1, *report["input_shape"]))
    for h in handles:
        h.remove()
    return {"connection_macs": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=sorted(STUDIES))
    known, _ = ap.parse_known_args()
    epochs, subset = BUDGETS[known.study]
    study.add_common_arguments(ap, len(STUDIES[known.study]), epochs, subset)
    args = ap.parse_args()
    study.set_threads(args.threads)
    rows = study.select(STUDIES[args.study], args.rows)
    budget = {"epochs": args.epochs, "train_subset": args.train_subset}
    results = study.run_rows(args.out, rows, args.seeds, budget, connection_macs)
    print(f"\nFashion-MNIST, {args.epochs} epochs on {args.train_subset} training images, seeds {args.seeds}\n")
    print(study.markdown_table(results, {"params": "deployed params", "macs": "deployed MACs / image",
                                         "connection_macs": "MACs of kept connections"}))


if __name__ == "__main__":
    main()
