"""A network as if trained, for benchmarks and tests: BatchNorm statistics away from the
identity (so folding them is not a no-op) and learned structure at its end state — every
learned group conv condensed to its last stage, FLGC assignments random and frozen."""
from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def at_end_state(model: nn.Module, seed: int = 0) -> nn.Module:
    from learnsparse.nn import FLGConv, LearnedGroupConv

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        elif isinstance(m, LearnedGroupConv):
            m.condense_to(m.max_stage)
        elif isinstance(m, FLGConv):
            m.in_logits.copy_(torch.randn(m.in_logits.shape, generator=g))
            m.out_logits.copy_(torch.randn(m.out_logits.shape, generator=g))
            m.freeze()
    return model
