"""CondenseNet (Huang et al., CVPR 2018): DenseNet with learned group convolutions.

Each dense layer is BN-ReLU-LearnedGroupConv 1x1 (in → bottleneck·k, G groups, condense
factor C) then BN-ReLU-Conv 3x3 (bottleneck·k → k, G groups), concatenated to its input.
Transitions are average pooling only; growth rate doubles from block to block.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from learnsparse.layers.dense_block import CondenseNetSpec, DenseBlock

from .registry import register_model


class CondenseNet(nn.Module):
    def __init__(self, spec: CondenseNetSpec, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if len(spec.stages) != len(spec.growth):
            raise ValueError("CondenseNet: stages and growth must have the same length")
        self.spec = spec
        c = 2 * spec.growth[0]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, spec.init_stride, 1, bias=False)]
        for i, (n, k) in enumerate(zip(spec.stages, spec.growth)):
            block = DenseBlock(n, c, k, spec)
            layers.append(block)
            c = block.out_channels
            if i < len(spec.stages) - 1:
                layers.append(nn.AvgPool2d(2))
        self.features = nn.Sequential(*layers)
        self.norm = nn.BatchNorm2d(c)
        self.pool = nn.AdaptiveAvgPool2d(1)  # the 8x8 (CIFAR) or 7x7 (ImageNet) map → 1x1
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.relu(self.norm(self.features(x)))
        return self.classifier(self.pool(x).flatten(1))


def _cifar(depth: int, growth=(8, 16, 32), **kw) -> CondenseNetSpec:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR CondenseNet depth must be 6N+2, got {depth}")
    n = (depth - 2) // 6
    return CondenseNetSpec(stages=(n, n, n), growth=growth, **kw)


def _build(spec: CondenseNetSpec, num_classes: int, in_channels: int) -> CondenseNet:
    return CondenseNet(spec, num_classes, in_channels)


@register_model
def condensenet50(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _build(_cifar(50), num_classes, in_channels)


@register_model
def condensenet74(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _build(_cifar(74), num_classes, in_channels)


@register_model
def condensenet86(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _build(_cifar(86), num_classes, in_channels)


@register_model
def condensenet98(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _build(_cifar(98), num_classes, in_channels)


@register_model
def condensenet110(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _build(_cifar(110), num_classes, in_channels)


@register_model
def condensenet122(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _build(_cifar(122), num_classes, in_channels)


@register_model
def condensenet182(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _build(_cifar(182, growth=(12, 24, 48)), num_classes, in_channels)


def _imagenet(c: int) -> CondenseNetSpec:
    return CondenseNetSpec(stages=(4, 6, 8, 10, 8), growth=(8, 16, 32, 64, 128), groups_1x1=c, groups_3x3=c,
                           condense_factor=c, init_stride=2)


@register_model
def condensenet74_c4(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return _build(_imagenet(4), num_classes, in_channels)


@register_model
def condensenet74_c8(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return _build(_imagenet(8), num_classes, in_channels)


def _mini(conv1: str) -> CondenseNetSpec:
    return CondenseNetSpec(stages=(4, 4, 4), growth=(8, 16, 32), init_stride=2, conv1=conv1)


@register_model
def condensenet_mini(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A small CondenseNet for 28x28 inputs (Fashion-MNIST): a stride-2 stem, 3 blocks of 4 layers."""
    return _build(_mini("learned"), num_classes, in_channels)


@register_model
def condensenet_mini_fixed(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """condensenet_mini with fixed 1x1 groups: the exported learned model's multiply-adds."""
    return _build(_mini("fixed"), num_classes, in_channels)


@register_model
def condensenet_mini_shuffle(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """condensenet_mini with fixed 1x1 groups and a channel shuffle after them."""
    return _build(_mini("fixed_shuffle"), num_classes, in_channels)


@register_model
def condensenet_mini_dense(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """condensenet_mini with ungrouped 1x1 convs, bottleneck narrowed by C to match their MACs."""
    return _build(_mini("dense"), num_classes, in_channels)


@register_model
def condensenet_mini_plain(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """condensenet_mini with full ungrouped 1x1 convs (DenseNet-BC's), for sparsity=flgc/lgc."""
    return _build(_mini("plain"), num_classes, in_channels)
