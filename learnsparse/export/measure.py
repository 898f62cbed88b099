"""Params, multiply-adds and latency of a model, and the per-layer rows of the report."""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.engine.model_stats import count_params, flops_by_module  # noqa: F401  (count_params: for the report)


def macs_by_module(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-adds (conv, linear, matmul) per module path; '' is the whole model."""
    return {name: flops // 2 for name, flops in flops_by_module(model, example).items()}


@torch.no_grad()
def interleaved_latency(models: dict[str, nn.Module], example: torch.Tensor, rounds: int = 20,
                        warmup: int = 2) -> dict[str, float]:
    """Median seconds per forward, models timed in turn each round so noise hits all alike."""
    from .runtimes import interleaved_ms

    ms = interleaved_ms({k: (lambda m=m: m(example)) for k, m in models.items()}, rounds=rounds, warmup=warmup)
    return {k: v / 1e3 for k, v in ms.items()}
