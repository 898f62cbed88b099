"""ConnectivityConv: a convolution with any fixed connection matrix.

Output channel o reads input channel i only where connectivity[o, i] is True; the weights
elsewhere are held at zero by the mask. Uniform, depthwise, uneven, shuffled and interleaved
groups, LeNet-5's C3 table and random connections are all this one layer with a different
matrix (`learnsparse.layers.connectivity`), and all export through one converter.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.core.layer_types import register_layer_type

from .connectivity import Matrix, Pattern, blocks, connectivity_of, resolve
from .deployed import conv_with
from .permuted_group_conv import PermutedGroupConv


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class ConnectivityConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, connectivity: Matrix | Pattern,
                 stride=1, padding=0, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.register_buffer("connection", resolve(connectivity, out_channels, in_channels).clone())
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # He-uniform on the fan-in each output really has (its connected inputs), as a dense
        # conv of that width would be initialized.
        fan_in = self.connection.sum(dim=1).clamp_min(1).float()[:, None, None, None] * math.prod(self.kernel_size)
        bound = torch.sqrt(6.0 / fan_in) / math.sqrt(1 + 5)  # kaiming_uniform_ with a = √5, per row
        with torch.no_grad():
            self.weight.uniform_(-1, 1).mul_(bound).mul_(self.mask())
            if self.bias is not None:
                self.bias.uniform_(-1, 1).mul_(1 / torch.sqrt(fan_in.flatten()))

    def mask(self) -> torch.Tensor:
        return self.connection[:, :, None, None].to(self.weight.dtype)

    def connectivity(self) -> Matrix:
        return self.connection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        kept = int(self.connection.sum())
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, connections={kept}/{self.connection.numel()}")


def from_connectivity(weight: torch.Tensor, bias: torch.Tensor | None, matrix: Matrix, stride, padding,
                      layout: str = "auto") -> nn.Module:
    """The deployed conv computing conv2d(x, weight ⊙ matrix, bias): grouped by the matrix's blocks."""
    matrix = matrix.to(weight.device).bool()
    masked = weight.detach() * matrix[:, :, None, None].to(weight.dtype)
    out_block, in_block, count = blocks(matrix)
    if count <= 1 and bool((out_block >= 0).all()) and bool((in_block >= 0).all()):
        return conv_with(masked, bias.detach() if bias is not None else None, _Geometry(stride, padding))
    # Outputs with no input are their bias alone: one extra group with no inputs holds them
    # (the padded layout gives them zero weights); unread inputs go to a group with no outputs.
    out_group = torch.where(out_block >= 0, out_block, count)
    in_group = torch.where(in_block >= 0, in_block, count + 1)
    # Number only the groups that exist: an empty group would still cost a padded slot.
    used, compact = torch.unique(torch.cat([out_group, in_group]), return_inverse=True)
    out_group, in_group = compact[:len(out_group)].to(weight.device), compact[len(out_group):].to(weight.device)
    return PermutedGroupConv.from_assignment(masked, bias, in_group, out_group, len(used), stride, padding, layout)


class _Geometry:
    def __init__(self, stride, padding):
        self.stride, self.padding = stride, padding


def convert(m: ConnectivityConv) -> nn.Module:
    return from_connectivity(m.weight, m.bias, m.connectivity(), m.stride, m.padding)


def dense_form(m: ConnectivityConv) -> nn.Conv2d:
    return conv_with(m.weight.detach() * m.mask(), m.bias.detach() if m.bias is not None else None, m)


register_layer_type(ConnectivityConv, converter=convert, dense_form=dense_form,
                    save_structure=lambda m: {"connection": connectivity_of(m).clone()},
                    restore_structure=lambda m, s: m.connection.copy_(s["connection"]))
