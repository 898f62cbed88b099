"""CondenseNet's dense layer and block (DenseNet with learned group convolutions), and their
export: a block whose 1x1 convs learned their groups becomes one CondensedDenseBlock
(vectorized: one gather per layer).

Each dense layer is BN-ReLU-LearnedGroupConv 1x1 (in → bottleneck·k, G groups, condense
factor C) then BN-ReLU-Conv 3x3 (bottleneck·k → k, G groups), concatenated to its input.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.core.layer_types import CONDENSING, dense_equivalent, layer_type, register_layer_type

from .condensed_dense_block import CondensedDenseBlock, CondensedDenseLayer
from .deployed import ChannelShuffle, IndexSelectGroupConv
from .learned_group_conv import LearnedGroupConv


@dataclass(frozen=True)
class CondenseNetSpec:
    stages: Sequence[int]
    growth: Sequence[int]
    bottleneck: int = 4
    groups_1x1: int = 4
    groups_3x3: int = 4
    condense_factor: int = 4
    dropout: float = 0.0
    init_stride: int = 1
    # The 1x1 conv of each dense layer: "learned" (CondenseNet), or the baselines it is compared
    # with at equal multiply-adds: "fixed" groups, "fixed_shuffle" (groups + channel shuffle,
    # as in ShuffleNet), "dense" (an ungrouped 1x1 with the bottleneck narrowed by C); "plain" is
    # DenseNet-BC's full ungrouped 1x1, for `sparsify` to give any learned grouping (FLGC).
    conv1: str = "learned"


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int, spec: CondenseNetSpec):
        super().__init__()
        mid = spec.bottleneck * growth
        self.norm1 = nn.BatchNorm2d(in_channels)
        if spec.conv1 == "learned":
            self.conv1 = LearnedGroupConv(in_channels, mid, 1, groups=spec.groups_1x1,
                                          condense_factor=spec.condense_factor, dropout=spec.dropout)
        elif spec.conv1 in ("fixed", "fixed_shuffle"):
            conv = nn.Conv2d(in_channels, mid, 1, groups=spec.groups_1x1, bias=False)
            self.conv1 = nn.Sequential(conv, ChannelShuffle(spec.groups_1x1)) if spec.conv1 == "fixed_shuffle" else conv
        elif spec.conv1 == "dense":
            mid //= spec.condense_factor
            self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        elif spec.conv1 == "plain":
            self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        else:
            raise ValueError("CondenseNet: conv1 must be learned, fixed, fixed_shuffle, dense or plain, "
                             f"got {spec.conv1!r}")
        self.norm2 = nn.BatchNorm2d(mid)
        # The narrowed dense variant's 3x3 conv is ungrouped: mid/C inputs for all filters costs
        # what the grouped one costs on mid inputs when C = groups_3x3.
        groups_3x3 = 1 if spec.conv1 == "dense" else spec.groups_3x3
        self.conv2 = nn.Conv2d(mid, growth, 3, padding=1, groups=groups_3x3, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], 1)


class DenseBlock(nn.Sequential):
    def __init__(self, num_layers: int, in_channels: int, growth: int, spec: CondenseNetSpec):
        super().__init__(*(DenseLayer(in_channels + i * growth, growth, spec) for i in range(num_layers)))
        self.in_channels, self.out_channels = in_channels, in_channels + num_layers * growth


def _bn_subset(bn: nn.BatchNorm2d, index: torch.Tensor) -> nn.BatchNorm2d:
    """A BatchNorm over the channels `index` picks (a channel may appear more than once)."""
    out = nn.BatchNorm2d(index.numel(), eps=bn.eps, momentum=bn.momentum, affine=bn.affine)
    with torch.no_grad():
        if bn.affine:
            out.weight.copy_(bn.weight[index])
            out.bias.copy_(bn.bias[index])
        out.running_mean.copy_(bn.running_mean[index])
        out.running_var.copy_(bn.running_var[index])
    return out.to(bn.running_mean.device).eval()


@torch.no_grad()
def convert_dense_layer(layer: DenseLayer) -> CondensedDenseLayer:
    # conv1 is a learned group conv, or its deployed form already (condensed in training).
    lgc = layer.conv1
    grouped = copy.deepcopy(lgc) if isinstance(lgc, IndexSelectGroupConv) else IndexSelectGroupConv.from_trained(lgc)
    g, mid = grouped.groups, grouped.out_channels
    # norm2 acts on conv1's output before the shuffle, i.e. in group-contiguous order, where
    # position g·(mid/G) + k holds filter k·G + g; it folds into the grouped conv.
    order = torch.arange(mid, device=grouped.index.device).reshape(mid // g, g).t().reshape(-1)
    norm2 = _bn_subset(layer.norm2, order)
    scale = norm2.weight * torch.rsqrt(norm2.running_var + norm2.eps)
    conv1 = grouped.conv
    bias = conv1.bias.detach() if conv1.bias is not None else torch.zeros_like(scale)
    conv1.weight.mul_(scale.view(-1, 1, 1, 1))
    conv1.bias = nn.Parameter(bias * scale + norm2.bias - norm2.running_mean * scale)
    # conv2 keeps the trained layer's weight layout: `condense` makes the whole network
    # channels-last for eager PyTorch, and only then (a graph traces plain weights).
    return CondensedDenseLayer(grouped.index, _bn_subset(layer.norm1, grouped.index), conv1, layer.conv2)


def convert_dense_block(block: DenseBlock) -> CondensedDenseBlock | None:
    if not all(_condenses(layer.conv1) for layer in block):
        return None  # a baseline variant (fixed or dense 1x1): already deployable as it is
    return CondensedDenseBlock([convert_dense_layer(layer) for layer in block], block.in_channels)


def dense_block_form(block: DenseBlock) -> DenseBlock:
    """The block with its learned 1x1 convs as plain convs (zeros baked in): no gathers."""
    return dense_equivalent(block)


register_layer_type(DenseBlock, converter=convert_dense_block, dense_form=dense_block_form)


def _condenses(conv1: nn.Module) -> bool:
    """A 1x1 conv that learns its input groups by condensing, or its deployed form already
    (condensed in training)."""
    entry = layer_type(conv1)
    return isinstance(conv1, IndexSelectGroupConv) or (entry is not None and entry.learns == CONDENSING)
