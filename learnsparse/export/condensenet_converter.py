"""CondenseNet dense blocks → CondensedDenseBlock (vectorized: one gather per layer)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from learnsparse.models.condensenet import DenseBlock, DenseLayer
from learnsparse.nn.condensed_dense_block import CondensedDenseBlock, CondensedDenseLayer
from learnsparse.nn.deployed import IndexSelectGroupConv
from learnsparse.nn.learned_group_conv import LearnedGroupConv

from learnsparse.layer_types import register_layer_type

from .dense_form import dense_equivalent


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
    if not all(isinstance(layer.conv1, (LearnedGroupConv, IndexSelectGroupConv)) for layer in block):
        return None  # a baseline variant (fixed or dense 1x1): already deployable as it is
    return CondensedDenseBlock([convert_dense_layer(layer) for layer in block], block.in_channels)


def dense_block_form(block: DenseBlock) -> DenseBlock:
    """The block with its learned 1x1 convs as plain convs (zeros baked in): no gathers."""
    return dense_equivalent(block)


register_layer_type(DenseBlock, converter=convert_dense_block, dense_form=dense_block_form)
