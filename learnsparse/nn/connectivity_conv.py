"""ConnectivityConv: a convolution with any fixed connection matrix.

Output channel o reads input channel i only where connectivity[o, i] is True; the weights
elsewhere are held at zero by the mask. Uniform, depthwise, uneven, shuffled and interleaved
groups, LeNet-5's C3 table and random connections are all this one layer with a different
matrix (`learnsparse.connectivity`), and all export through one converter.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.connectivity import Matrix, Pattern, resolve


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
