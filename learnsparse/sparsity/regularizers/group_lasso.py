"""`sparsity=group_lasso`: λ Σ_g ‖w_g‖₂ for the chosen group kinds (filter, channel, shape,
kernel2d, layer) on the chosen layers."""
from __future__ import annotations

import torch.nn as nn

from .penalty import GroupPenalty
from .selection_args import chosen_layers


class GroupLasso(GroupPenalty):
    def __init__(self, model: nn.Module, strength: float = 1e-4, kinds: list[str] = ("filter",),
                 mode: str = "subgradient", layers: str = "conv", include: list[str] | None = None,
                 exclude: list[str] | None = None, exclude_first_conv: bool = False, exclude_shortcuts: bool = False,
                 until: float = 1.0):
        chosen = chosen_layers(model, layers, include, exclude, exclude_first_conv, exclude_shortcuts)
        terms = [(n, m.weight, kind) for n, m in chosen for kind in kinds]
        super().__init__(terms, strength, mode, until)
