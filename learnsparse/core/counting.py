"""Parameter, FLOP and multiply-add counts, measured with torch.utils.flop_counter on one example image."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward_flops(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter, torch.enable_grad():
        model(example)
    root = type(model).__name__ + "."
    out = {"": counter.get_total_flops()}
    for key, ops in counter.get_flop_counts().items():
        if key.startswith(root):
            out[key[len(root):]] = sum(ops.values())
    return out


@torch.no_grad()
def flops_by_module(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """FLOPs per image of a forward pass in eval mode (a multiply-add counts as 2), per module
    path relative to `model`; '' is the whole model.

    Measured as the cost of two images minus that of one, so work done once per forward
    whatever the batch — a trained layer building its mask from learned assignments — is not
    counted as if every image paid it. Counted with autograd on, so layers run their plain
    ops: inference-only fast paths (the deployed CondenseNet block adds a BatchNorm shift
    through an extra matmul column) would otherwise count bias additions as multiply-adds."""
    one = example[:1]
    was_training = model.training
    model.eval()
    try:
        single = _forward_flops(model, one)
        double = _forward_flops(model, torch.cat([one, one]))
    finally:
        model.train(was_training)
    return {k: double.get(k, 0) - v for k, v in single.items()}


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    return flops_by_module(model, example)[""]


def model_stats(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    flops = count_flops(model, example)
    return {"params": count_params(model), "flops": flops, "macs": flops // 2}


def macs_by_module(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-adds (conv, linear, matmul) per module path; '' is the whole model."""
    return {name: flops // 2 for name, flops in flops_by_module(model, example).items()}
