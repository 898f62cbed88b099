"""What a residual block computes once its whole residual branch outputs zero."""
from __future__ import annotations

import torch
import torch.nn as nn


class ShortcutOnly(nn.Module):
    """`post(shortcut(x))`: the branch is gone; the block keeps its shortcut (identity, or the
    projection when it changes shape) and whatever followed the add (ReLU in ResNets)."""

    def __init__(self, shortcut: nn.Module | None = None, relu_after: bool = True):
        super().__init__()
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.relu_after = relu_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shortcut(x)
        return torch.relu(y) if self.relu_after else y

    def extra_repr(self) -> str:
        return f"relu_after={self.relu_after}"
