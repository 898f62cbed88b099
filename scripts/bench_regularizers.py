"""Cost of each regularizer on a training step: ResNet-20, CIFAR-sized batch of 128, CPU.

Each variant runs the same step the Trainer runs (forward, the plugin's loss term, backward,
the plugin's gradient or proximal update, SGD step); variants are timed in turn every round
(interleaved), median of --rounds, and reported as a ratio to the plain step.

    python scripts/bench_regularizers.py [--rounds 21] [--steps 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import types

import torch
import torch.nn.functional as F

from learnsparse.models import create_model
from learnsparse.sparsity.regularizers import BNSlimming, GroupLasso, L1, SSLDepth, SSLFilterChannel, SSLShape

VARIANTS = {
    "l1": lambda m, mode: L1(m, 1e-5, mode),
    "group_lasso filter": lambda m, mode: GroupLasso(m, 1e-4, ["filter"], mode),
    "group_lasso channel": lambda m, mode: GroupLasso(m, 1e-4, ["channel"], mode),
    "group_lasso shape": lambda m, mode: GroupLasso(m, 1e-4, ["shape"], mode),
    "group_lasso kernel2d": lambda m, mode: GroupLasso(m, 1e-4, ["kernel2d"], mode),
    "group_lasso layer": lambda m, mode: GroupLasso(m, 1e-4, ["layer"], mode),
    "ssl_filter_channel": lambda m, mode: SSLFilterChannel(m, 1e-4, mode),
    "ssl_shape": lambda m, mode: SSLShape(m, 1e-4, mode),
    "ssl_depth": lambda m, mode: SSLDepth(m, 1e-4, mode),
    "bn_slimming": lambda m, mode: BNSlimming(m, 1e-4, mode),
}


class Step:
    """One training step with an optional plugin, called the way the Trainer calls hooks."""

    def __init__(self, model, plugin, x, y):
        self.model, self.plugin, self.x, self.y = model, plugin, x, y
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        if plugin is not None:
            plugin.trainer = types.SimpleNamespace(optimizer=self.opt, progress=0.0)
            plugin.before_train()

    def __call__(self):
        losses = {"ce": F.cross_entropy(self.model(self.x), self.y)}
        if self.plugin is not None:
            losses.update(self.plugin.extra_losses())
        self.opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        if self.plugin is not None:
            self.plugin.after_backward()
        self.opt.step()
        if self.plugin is not None:
            self.plugin.after_step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--steps", type=int, default=2, help="steps per timing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--modes", nargs="+", default=["subgradient", "proximal"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.benchmark import Timer

    torch.manual_seed(0)
    base = create_model("resnet20", num_classes=10, in_channels=3).train()
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    steps = {"none": Step(copy.deepcopy(base), None, x, y)}
    for name, make in VARIANTS.items():
        for mode in args.modes:
            model = copy.deepcopy(base)
            steps[f"{name} ({mode})"] = Step(model, make(model, mode), x, y)
    for step in steps.values():
        step()
    times = {k: [] for k in steps}
    for _ in range(args.rounds):
        for k, step in steps.items():
            times[k].append(Timer("step()", globals={"step": step}, num_threads=args.threads).timeit(args.steps).mean)
    base_ms = statistics.median(times["none"]) * 1e3
    print(f"ResNet-20, batch {args.batch}, {args.threads} threads, median of {args.rounds} interleaved rounds "
          f"of {args.steps} steps")
    print("| regularizer | step ms | vs no regularizer |")
    print("| --- | ---: | ---: |")
    print(f"| none | {base_ms:.1f} | 1.000 |")
    for k in list(steps)[1:]:
        ms = statistics.median(times[k]) * 1e3
        print(f"| {k} | {ms:.1f} | {ms / base_ms:.3f} |")


if __name__ == "__main__":
    main()
