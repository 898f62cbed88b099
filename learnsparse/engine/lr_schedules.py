"""Per-iteration learning-rate schedules as pure functions of the step.

Each builder returns a `LambdaLR` stepped once per iteration; the factor it applies is a
pure function of the step, so a resumed run lands on exactly the same learning rate.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _with_warmup(fn: Callable[[int], float], warmup_steps: int, start_factor: float) -> Callable[[int], float]:
    if warmup_steps <= 0:
        return fn

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start_factor + (1.0 - start_factor) * step / warmup_steps
        return fn(step)

    return factor


def cosine(optimizer: Optimizer, *, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0,
           warmup_start_factor: float = 0.1, min_factor: float = 0.0) -> LambdaLR:
    """CondenseNet's schedule: lr · ½(1 + cos(π t/T)), updated every iteration."""
    warmup = int(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        t = min(max(step - warmup, 0) / max(total_steps - warmup, 1), 1.0)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return LambdaLR(optimizer, _with_warmup(factor, warmup, warmup_start_factor))


def multistep(optimizer: Optimizer, *, total_steps: int, steps_per_epoch: int, milestones: Sequence[float] = (0.5, 0.75),
              gamma: float = 0.1, warmup_epochs: float = 0, warmup_start_factor: float = 0.1) -> LambdaLR:
    """Multiply by `gamma` at each milestone. Milestones ≤ 1 are fractions of training, > 1 are epochs."""
    bounds = sorted(int(m * total_steps) if m <= 1 else int(m * steps_per_epoch) for m in milestones)

    def factor(step: int) -> float:
        return gamma ** sum(step >= b for b in bounds)

    return LambdaLR(optimizer, _with_warmup(factor, int(warmup_epochs * steps_per_epoch), warmup_start_factor))


def constant(optimizer: Optimizer, *, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0,
             warmup_start_factor: float = 0.1) -> LambdaLR:
    return LambdaLR(optimizer, _with_warmup(lambda step: 1.0, int(warmup_epochs * steps_per_epoch), warmup_start_factor))
