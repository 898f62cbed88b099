"""Parameter and FLOP counts, measured with torch.utils.flop_counter on one example image."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass (a multiply-add counts as 2), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def model_stats(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    flops = count_flops(model, example)
    return {"params": count_params(model), "flops": flops, "macs": flops // 2}
