"""A network as if trained, for benchmarks and tests: BatchNorm statistics away from the
identity (so folding them is not a no-op) and learned structure at its end state — every
learned group conv condensed to its last stage, FLGC assignments random and frozen."""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.core.layer_types import has_fact, layer_type


@torch.no_grad()
def at_end_state(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        elif has_fact(m, "finish"):
            layer_type(m).finish(m, g)
    return model
