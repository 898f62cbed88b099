"""Layer choice shared by the regularizer plugins' constructors."""
from __future__ import annotations

from typing import Iterable

import torch.nn as nn

from ..layer_selection import select_layers

LAYER_TYPES = {"conv": (nn.Conv2d,), "linear": (nn.Linear,), "conv_linear": (nn.Conv2d, nn.Linear),
               "batchnorm": (nn.BatchNorm2d,)}


def chosen_layers(model: nn.Module, layers: str, include: Iterable[str] | None, exclude: Iterable[str] | None,
                  exclude_first_conv: bool = False, exclude_shortcuts: bool = False) -> list[tuple[str, nn.Module]]:
    if layers not in LAYER_TYPES:
        raise ValueError(f"layers must be one of {list(LAYER_TYPES)}, got {layers!r}")
    return select_layers(model, LAYER_TYPES[layers], include, exclude, exclude_first_conv, exclude_shortcuts)
