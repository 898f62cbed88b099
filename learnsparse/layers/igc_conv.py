"""IGCConv: an interleaved group convolution block (IGCV1, Zhang et al., ICCV 2017).

    primary group conv (L partitions, k×k)  →  interleave  →  secondary group conv (M partitions,
    1x1)  →  permutation back

The interleaving puts the m-th channel of every primary partition into secondary partition m,
so each output reads every input through exactly one path when out = L·M: the block connects
like a dense k×k conv with L·M·(M·k² + L) parameters instead of (L·M)²·k². There is no
BatchNorm or ReLU between the two convs (the official network's placement): the block is
linear, and its dense form is the product of the two.

The two permutations are ShuffleNet-style channel shuffles: with C output channels, the first
(branch factor L) puts channel l·(C/L) + j at position j·L + l; the second (branch factor M)
undoes it when C = L·M, as in the official implementation's Reorder operator.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.core.layer_types import register_layer_type

from . import connectivity as conn
from .channel_ops import channel_shuffle
from .deployed import conv_with, ungrouped_weight
from .permuted_group_conv import PermutedGroupConv


class IGCConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 primary_groups: int = 2, secondary_groups: int = 2):
        super().__init__()
        for what, n, channels in (("primary_groups", primary_groups, (in_channels, out_channels)),
                                  ("secondary_groups", secondary_groups, (out_channels,))):
            if n < 1 or any(c % n for c in channels):
                raise ValueError(f"{what}={n} must divide the channels it partitions {list(channels)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.primary_groups, self.secondary_groups = primary_groups, secondary_groups
        self.primary = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=primary_groups,
                                 bias=False)
        self.secondary = nn.Conv2d(out_channels, out_channels, 1, groups=secondary_groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = channel_shuffle(self.primary(x), self.primary_groups)
        return channel_shuffle(self.secondary(y), self.secondary_groups)

    def interleave_order(self) -> torch.Tensor:
        """Position p after the primary conv holds its filter interleave_order()[p]."""
        return conn.shuffle_order(self.out_channels, self.primary_groups)

    def back_order(self) -> torch.Tensor:
        """Output position q holds the secondary conv's filter back_order()[q]."""
        return conn.shuffle_order(self.out_channels, self.secondary_groups)

    @torch.no_grad()
    def composed_weight(self) -> torch.Tensor:
        """The one k×k kernel [out, in, k, k] the block equals (it is linear)."""
        primary = ungrouped_weight(self.primary)[self.interleave_order()]  # [C, in, k, k]
        secondary = ungrouped_weight(self.secondary)[self.back_order()][:, :, 0, 0]  # [C, C]
        return torch.einsum("op,pikl->oikl", secondary, primary)

    def connectivity(self) -> torch.Tensor:
        return conn.interleaved(self.primary_groups, self.secondary_groups, self.out_channels, self.in_channels)

    def extra_repr(self) -> str:
        return f"primary_groups={self.primary_groups}, secondary_groups={self.secondary_groups}"


def convert(m: IGCConv) -> nn.Sequential:
    device = m.primary.weight.device
    return nn.Sequential(PermutedGroupConv(m.primary, None, m.interleave_order().to(device), m.in_channels),
                         PermutedGroupConv(m.secondary, None, m.back_order().to(device), m.out_channels))


def dense_form(m: IGCConv) -> nn.Conv2d:
    return conv_with(m.composed_weight(), None, m.primary)


# A fixed structure: nothing learned to save, the constructor rebuilds it.
register_layer_type(IGCConv, converter=convert, dense_form=dense_form)
