"""Parameter and FLOP counts, measured with torch.utils.flop_counter on one example image."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def flops_by_module(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """FLOPs of one forward pass in eval mode (a multiply-add counts as 2), per module path
    relative to `model`; '' is the whole model.

    Counted with autograd on, so layers run their plain ops: inference-only fast paths (the
    deployed CondenseNet block adds a BatchNorm shift through an extra matmul column) would
    otherwise count bias additions as multiply-adds."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.enable_grad():
            model(example)
    finally:
        model.train(was_training)
    root = type(model).__name__ + "."
    out = {"": counter.get_total_flops()}
    for key, ops in counter.get_flop_counts().items():
        if key.startswith(root):
            out[key[len(root):]] = sum(ops.values())
    return out


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    return flops_by_module(model, example)[""]


def model_stats(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    flops = count_flops(model, example)
    return {"params": count_params(model), "flops": flops, "macs": flops // 2}
