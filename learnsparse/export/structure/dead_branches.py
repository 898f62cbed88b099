"""Depth-wise structure: a residual block whose branch outputs exactly zero is its shortcut.

The branch's output is its last BatchNorm's. That is zero everywhere only when every channel
of that BatchNorm has γ = β = 0 (the freeze step kills them with the conv weights), or when
the conv before it is all zero and the constant β − γμ/σ is zero too. Anything else (a zero
conv before a BatchNorm with a non-zero constant) still adds a constant and is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock as TvBasicBlock
from torchvision.models.resnet import Bottleneck as TvBottleneck

from learnsparse.models.resnet_cifar import BasicBlock as CifarBasicBlock
from learnsparse.nn.shortcut_only import ShortcutOnly


@dataclass(frozen=True)
class ResidualBlockKind:
    last_conv: Callable[[nn.Module], nn.Conv2d]
    last_bn: Callable[[nn.Module], nn.BatchNorm2d]
    shortcut: Callable[[nn.Module], nn.Module | None]
    relu_after: bool
    is_residual: Callable[[nn.Module], bool] = lambda block: True


RESIDUAL_BLOCKS: dict[type, ResidualBlockKind] = {
    CifarBasicBlock: ResidualBlockKind(lambda b: b.conv2, lambda b: b.bn2, lambda b: b.shortcut, True),
    TvBasicBlock: ResidualBlockKind(lambda b: b.conv2, lambda b: b.bn2, lambda b: b.downsample, True),
    TvBottleneck: ResidualBlockKind(lambda b: b.conv3, lambda b: b.bn3, lambda b: b.downsample, True),
    InvertedResidual: ResidualBlockKind(lambda b: b.conv[-2], lambda b: b.conv[-1], lambda b: None, False,
                                        is_residual=lambda b: b.use_res_connect),
}


def residual_branch_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) of every residual block of a kind the export understands."""
    return [(n, m) for n, m in model.named_modules()
            if type(m) in RESIDUAL_BLOCKS and RESIDUAL_BLOCKS[type(m)].is_residual(m)]


def branch_is_dead(block: nn.Module) -> bool:
    kind = RESIDUAL_BLOCKS[type(block)]
    bn, conv = kind.last_bn(block), kind.last_conv(block)
    gamma, beta = bn.weight.detach(), bn.bias.detach()
    if bool(((gamma == 0) & (beta == 0)).all()):
        return True
    conv_zero = bool((conv.weight == 0).all()) and (conv.bias is None or bool((conv.bias == 0).all()))
    constant = beta - gamma * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)
    return conv_zero and bool((constant == 0).all())


def shortcut_only(block: nn.Module) -> ShortcutOnly:
    kind = RESIDUAL_BLOCKS[type(block)]
    return ShortcutOnly(kind.shortcut(block), relu_after=kind.relu_after)


def dead_branch_names(model: nn.Module) -> list[str]:
    return [n for n, m in residual_branch_modules(model) if branch_is_dead(m)]
