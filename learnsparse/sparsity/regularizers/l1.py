"""`sparsity=l1`: λ Σ|w| on the chosen layers' weights (unstructured; every weight is a group)."""
from __future__ import annotations

import torch.nn as nn

from .penalty import GroupPenalty
from .selection_args import chosen_layers


class L1(GroupPenalty):
    def __init__(self, model: nn.Module, strength: float = 1e-5, mode: str = "subgradient", layers: str = "conv",
                 include: list[str] | None = None, exclude: list[str] | None = None, until: float = 1.0):
        terms = [(n, m.weight, "element") for n, m in chosen_layers(model, layers, include, exclude)]
        super().__init__(terms, strength, mode, until)
