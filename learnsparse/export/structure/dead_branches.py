"""Depth-wise structure: a residual block whose branch outputs exactly zero is its shortcut.

The branch's output is its last BatchNorm's. That is zero everywhere only when every channel
of that BatchNorm has γ = β = 0 (the freeze step kills them with the conv weights), or when
the conv before it is all zero and the constant β − γμ/σ is zero too. Anything else (a zero
conv before a BatchNorm with a non-zero constant) still adds a constant and is kept.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.layers.residual_blocks import RESIDUAL_BLOCKS, residual_blocks
from learnsparse.layers.shortcut_only import ShortcutOnly


def branch_is_dead(block: nn.Module) -> bool:
    kind = RESIDUAL_BLOCKS[type(block)]
    bn, conv = kind.last_bn(block), kind.last_conv(block)
    gamma, beta = bn.weight.detach(), bn.bias.detach()
    if bool(((gamma == 0) & (beta == 0)).all()):
        return True
    weight = getattr(conv, "weight", None)  # an exported group conv has no single weight: not dead
    if not isinstance(weight, torch.Tensor):
        return False
    conv_zero = bool((weight == 0).all()) and (conv.bias is None or bool((conv.bias == 0).all()))
    constant = beta - gamma * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)
    return conv_zero and bool((constant == 0).all())


def shortcut_only(block: nn.Module) -> ShortcutOnly:
    kind = RESIDUAL_BLOCKS[type(block)]
    return ShortcutOnly(kind.shortcut(block), relu_after=kind.relu_after)


def dead_branch_names(model: nn.Module) -> list[str]:
    return [n for n, m in residual_blocks(model) if branch_is_dead(m)]
