"""The residual blocks learnsparse knows: where each one's branch ends and what its shortcut is.

SSL's depth-wise groups regularize the convs of a residual branch; the export replaces a
block whose branch outputs zero by its shortcut. Both read this table. torchvision's blocks are
declared here; a block class of learnsparse's own models (or of a user's) declares itself with
`register_residual_block` where it is defined.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock as TvBasicBlock
from torchvision.models.resnet import Bottleneck as TvBottleneck


@dataclass(frozen=True)
class ResidualBlockKind:
    last_conv: Callable[[nn.Module], nn.Conv2d]
    last_bn: Callable[[nn.Module], nn.BatchNorm2d]
    shortcut: Callable[[nn.Module], nn.Module | None]
    relu_after: bool
    is_residual: Callable[[nn.Module], bool] = lambda block: True


RESIDUAL_BLOCKS: dict[type, ResidualBlockKind] = {
    TvBasicBlock: ResidualBlockKind(lambda b: b.conv2, lambda b: b.bn2, lambda b: b.downsample, True),
    TvBottleneck: ResidualBlockKind(lambda b: b.conv3, lambda b: b.bn3, lambda b: b.downsample, True),
    InvertedResidual: ResidualBlockKind(lambda b: b.conv[-2], lambda b: b.conv[-1], lambda b: None, False,
                                        is_residual=lambda b: b.use_res_connect),
}


def register_residual_block(cls: type, kind: ResidualBlockKind) -> None:
    if cls in RESIDUAL_BLOCKS:
        raise ValueError(f"residual block {cls.__name__} is already registered")
    RESIDUAL_BLOCKS[cls] = kind


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) of every residual block of a kind in the table."""
    return [(n, m) for n, m in model.named_modules()
            if type(m) in RESIDUAL_BLOCKS and RESIDUAL_BLOCKS[type(m)].is_residual(m)]


def branch_convs(block: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """(name within the block, conv) of every conv of the residual branch (not the shortcut)."""
    shortcut = RESIDUAL_BLOCKS[type(block)].shortcut(block)
    in_shortcut = {id(m) for m in shortcut.modules()} if shortcut is not None else set()
    return [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in in_shortcut]
