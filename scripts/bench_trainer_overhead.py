"""Trainer time per epoch over a bare PyTorch loop's, same model, data and batch.

Both loops run in this process, interleaved (bare, trainer, bare, trainer, …) so machine noise
hits both alike; the ratio of medians is printed. The trainer runs with the per-step hooks a
real run has (training stats, progress bar, TensorBoard); evaluation and checkpoints are
per-epoch work a bare loop does not do, so they are left out of both.

    python scripts/bench_trainer_overhead.py [--model resnet20] [--batch 64] [--steps 8] [--rounds 21]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer
from torch.utils.data import DataLoader

from learnsparse.data import synthetic
from learnsparse.engine import Trainer
from learnsparse.engine.hooks import ProgressBarHook, TensorBoardHook, TrainStatsHook
from learnsparse.engine.lr_schedules import cosine
from learnsparse.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8, help="steps per epoch")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = synthetic(train_size=args.batch * args.steps, val_size=args.batch, image_size=32)
    loader = DataLoader(data.train, args.batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = create_model(args.model, num_classes=10, in_channels=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = cosine(opt, total_steps=10**9, steps_per_epoch=args.steps)
    tb_dir = tempfile.mkdtemp(prefix="bench_tb_")

    def bare_epoch() -> None:
        model.train()
        for images, targets in loader:
            loss = F.cross_entropy(model(images), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    def trainer_epoch() -> None:
        t = Trainer(model, opt, loader, epochs=1, device=torch.device("cpu"), lr_scheduler=sched)
        t.register_hooks([ProgressBarHook(), TrainStatsHook(), TensorBoardHook(tb_dir, log_every=50)])
        t.train()

    bare_epoch(), trainer_epoch()  # warm-up: allocator, oneDNN primitives, TensorBoard writer
    times = {"bare": [], "trainer": []}
    for _ in range(args.rounds):
        for name, fn in (("bare", bare_epoch), ("trainer", trainer_epoch)):
            # Timer runs on one thread unless told otherwise.
            times[name].append(Timer(stmt="fn()", globals={"fn": fn}, num_threads=args.threads).timeit(1).mean)
    bare, trainer = statistics.median(times["bare"]), statistics.median(times["trainer"])
    print(f"model {args.model}, batch {args.batch}, {args.steps} steps/epoch, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"bare loop    median {bare * 1e3:8.1f} ms/epoch")
    print(f"Trainer      median {trainer * 1e3:8.1f} ms/epoch")
    print(f"ratio trainer/bare: {trainer / bare:.3f}")


if __name__ == "__main__":
    main()
