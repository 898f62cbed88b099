"""CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of n basic blocks, 16-32-64 filters.

Shortcuts that change shape use a 1x1 projection with BN (option B), which structured
export can prune like any conv.
"""
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.layers.residual_blocks import ResidualBlockKind, register_residual_block

from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


register_residual_block(BasicBlock, ResidualBlockKind(lambda b: b.conv2, lambda b: b.bn2, lambda b: b.shortcut, True))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"CIFAR ResNet widths must be three positive channel counts, got {widths}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for planes, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def _resnet(depth: int, num_classes: int, in_channels: int) -> nn.Module:
    return CifarResNet(depth, num_classes, in_channels)


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _resnet(20, num_classes, in_channels)


@register_model
def resnet32(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _resnet(32, num_classes, in_channels)


@register_model
def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _resnet(56, num_classes, in_channels)


@register_model
def resnet110(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _resnet(110, num_classes, in_channels)
