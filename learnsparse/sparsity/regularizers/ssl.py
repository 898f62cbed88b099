"""SSL's presets (Wen et al., 2016): group lasso on the groups each of its experiments used.

- `ssl_filter_channel`: filters and input channels of every conv. The first conv's input
  channels are the image's and are left alone.
- `ssl_shape`: kernel fibres W[:, c, i, j] of every conv (the rows of the lowered GEMM).
- `ssl_depth`: one group per conv inside a residual branch (the whole layer), so whole
  branches go to zero and export as their shortcut; the stem, shortcuts and classifier are not
  regularized.
"""
from __future__ import annotations

import torch.nn as nn

from learnsparse.layers.residual_blocks import branch_convs, residual_blocks

from ..layer_selection import first_conv_name
from .penalty import GroupPenalty
from .selection_args import chosen_layers


class SSLFilterChannel(GroupPenalty):
    def __init__(self, model: nn.Module, strength: float = 1e-4, mode: str = "subgradient",
                 include: list[str] | None = None, exclude: list[str] | None = None, until: float = 1.0):
        first = first_conv_name(model)
        terms = []
        for n, m in chosen_layers(model, "conv", include, exclude):
            terms.append((n, m.weight, "filter"))
            if n != first:
                terms.append((n, m.weight, "channel"))
        super().__init__(terms, strength, mode, until)


class SSLShape(GroupPenalty):
    def __init__(self, model: nn.Module, strength: float = 1e-4, mode: str = "subgradient",
                 include: list[str] | None = None, exclude: list[str] | None = None, until: float = 1.0):
        terms = [(n, m.weight, "shape") for n, m in chosen_layers(model, "conv", include, exclude)]
        super().__init__(terms, strength, mode, until)


class SSLDepth(GroupPenalty):
    def __init__(self, model: nn.Module, strength: float = 1e-4, mode: str = "subgradient", until: float = 1.0):
        blocks = residual_blocks(model)
        if not blocks:
            raise ValueError("ssl_depth needs a model with residual blocks (resnet20…110, tv_resnet*, "
                             "tv_mobilenet_v2)")
        terms = [(f"{b}.{n}", conv.weight, "layer") for b, block in blocks for n, conv in branch_convs(block)]
        super().__init__(terms, strength, mode, until)
