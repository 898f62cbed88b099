"""`sparsity=bn_slimming`: network slimming (Liu et al., 2017) — λ Σ|γ| on BatchNorm scales.

Channels whose γ goes to zero are pruned after training by a global percentile threshold
(`sparsity.threshold` with `granularity: batchnorm`), which kills γ and β together so that
the channel outputs exactly zero and the export can remove it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .penalty import GroupPenalty
from .selection_args import chosen_layers


class BNSlimming(GroupPenalty):
    def __init__(self, model: nn.Module, strength: float = 1e-4, mode: str = "subgradient",
                 include: list[str] | None = None, exclude: list[str] | None = None, until: float = 1.0,
                 gamma_init: float | None = None):
        layers = [(n, m) for n, m in chosen_layers(model, "batchnorm", include, exclude) if m.affine]
        if gamma_init is not None:  # the paper starts every γ at 0.5
            with torch.no_grad():
                for _, m in layers:
                    m.weight.fill_(gamma_init)
        super().__init__([(n, m.weight, "element") for n, m in layers], strength, mode, until)
