"""IGC ResNets for CIFAR (IGCV1, Zhang et al. 2017), after the official `get_symbol`:

- a 3x3 stem conv to L·M channels, then 3 stages of (depth − 2) / 6 residual blocks; the
  width doubles (and the resolution halves) at stages 2 and 3;
- each block: two IGC layers (primary 3x3 group conv with L partitions → interleave →
  secondary 1x1 group conv → permutation back → BatchNorm, no norm between the two convs),
  ReLU after the first; the secondary partition count of each layer is its input width / L for
  the first layer of a block and its output width / L for the second (so M doubles with the
  width); a shape-changing shortcut is a 1x1 stride-2 conv with L groups + BatchNorm;
- ReLU after the residual sum; global average pooling; a linear classifier.

`conv="regular"` gives the regular-conv ResNet of the same depth and width (3x3 convs, BatchNorm
after each, ungrouped projection shortcuts), `conv="group_shuffle"`
the same skeleton with each 3x3 conv a `Conv2d(groups=L)` followed by a channel shuffle
(ShuffleNet's fixed interleaving, one grouped conv instead of IGC's two), and M = 1 with
L = width the Xception-like special case of IGC (a channel-wise 3x3 conv, then a dense 1x1).
`width(L, M, kernel_size, params)` is the paper's width analysis.
"""
from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F

from learnsparse.layers.deployed import ChannelShuffle
from learnsparse.layers.igc_conv import IGCConv

from .registry import register_model

CONVS = ("igc", "regular", "group_shuffle")


def _conv3x3(kind: str, cin: int, cout: int, stride: int, primary: int, secondary: int) -> nn.Module:
    if kind == "regular":
        return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    if kind == "group_shuffle":
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=primary, bias=False), ChannelShuffle(primary))
    return IGCConv(cin, cout, 3, stride, 1, primary_groups=primary, secondary_groups=secondary)


class IGCBlock(nn.Module):
    def __init__(self, cin: int, cout: int, primary: int, conv: str = "igc"):
        super().__init__()
        stride = 1 if cin == cout else 2
        self.igc1 = _conv3x3(conv, cin, cout, stride, primary, cin // primary)
        self.bn1 = nn.BatchNorm2d(cout)
        self.igc2 = _conv3x3(conv, cout, cout, 1, primary, cout // primary)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if cin != cout:
            groups = 1 if conv == "regular" else primary
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False, groups=groups), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.igc1(x)))
        out = self.bn2(self.igc2(out))
        return F.relu(out + self.shortcut(x))


class IGCResNet(nn.Module):
    def __init__(self, depth: int, primary_groups: int, secondary_groups: int, num_classes: int = 10,
                 in_channels: int = 3, conv: str = "igc"):
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"conv must be one of {list(CONVS)}, got {conv!r}")
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"IGC ResNet depth must be 6n+2 (n ≥ 1), got {depth}")
        if primary_groups < 1 or secondary_groups < 1:
            raise ValueError("primary_groups and secondary_groups must be ≥ 1")
        n = (depth - 2) // 6
        width = primary_groups * secondary_groups
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, cin = [], width
        for cout in (width, 2 * width, 4 * width):
            blocks = []
            for _ in range(n):
                blocks.append(IGCBlock(cin, cout, primary_groups, conv))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


@register_model
def igc_resnet(num_classes: int = 10, in_channels: int = 3, depth: int = 38, primary_groups: int = 24,
               secondary_groups: int = 2, conv: str = "igc") -> nn.Module:
    """Any depth 6n+2, L and M; `conv` igc | regular | group_shuffle."""
    return IGCResNet(depth, primary_groups, secondary_groups, num_classes, in_channels, conv)


def _named(depth: int, primary: int, secondary: int, conv: str = "igc"):
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return IGCResNet(depth, primary, secondary, num_classes, in_channels, conv)
    return build


# IGC-L24M2 at depth 38 (the paper's CIFAR setting), its Xception-like twin (M = 1, L = 48)
# and the regular-conv ResNet of the same depth and width.
for _name, _args in {"igc_resnet38_l24m2": (38, 24, 2), "igc_resnet38_l48m1": (38, 48, 1)}.items():
    _builder = _named(*_args)
    _builder.__name__ = _name
    register_model(_builder)
for _name, _args in {"regular_resnet38_w48": (38, 24, 2, "regular")}.items():
    _builder = _named(*_args)
    _builder.__name__ = _name
    register_model(_builder)


def block_params(primary_groups: int, secondary_groups: int, kernel_size: int = 3) -> int:
    """Weights of one IGC block with L·M channels in and out: L·M·(M·k² + L)."""
    L, M, S = primary_groups, secondary_groups, kernel_size ** 2
    return L * M * (M * S + L)


def width(L: int | None, M: int | None, kernel_size: int = 3, params: int | None = None) -> float:
    """The width L·M of an IGC block with `params` weights (the paper's Section 3.3): give L
    or M and the other follows from params = L·M·(M·k² + L), the real-valued root (the paper
    rounds partitions to integers). With both given, params must be None and the width is L·M.
    At fixed params the width is largest when L = M·k²."""
    S = kernel_size ** 2
    if L is not None and M is not None:
        if params is not None:
            raise ValueError("give params with only one of L and M: the other is solved for")
        return float(L * M)
    if params is None or params <= 0:
        raise ValueError("params must be a positive number of weights")
    if M is not None:
        # G = L·M: G² + S·M²·G − M·params = 0
        return (-S * M * M + math.sqrt((S * M * M) ** 2 + 4 * M * params)) / 2
    if L is not None:
        # G = L·M: (S/L)·G² + L·G − params = 0
        a = S / L
        return (-L + math.sqrt(L * L + 4 * a * params)) / (2 * a)
    raise ValueError("give L or M")
