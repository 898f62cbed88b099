"""Params, multiply-adds and latency of a model, and the per-layer rows of the report."""
from __future__ import annotations

import logging
import statistics

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
    # torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on CPU-only
    # machines; that says nothing about timing.
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        quiet.setLevel(level)  # only for that import: the logger is the caller's again

    for _ in range(warmup):
        for m in models.values():
            m(example)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            times[k].append(Timer("m(x)", globals={"m": m, "x": example},
                                  num_threads=torch.get_num_threads()).timeit(1).mean)
    return {k: statistics.median(v) for k, v in times.items()}
