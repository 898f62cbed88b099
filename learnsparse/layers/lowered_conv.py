"""A convolution lowered to one matrix product over only the kernel positions it uses.

SSL's shape-wise sparsity zeroes whole *fibres* W[:, c, i, j] — one input channel at one
kernel position, for every filter. A conv is a GEMM between W reshaped to (filters, C·kh·kw)
and the im2col matrix of the input; a zero fibre is a zero column of W, so the matching row
of the im2col matrix is never needed. `LoweredConv2d` builds only the kept rows (a strided
view of the padded input, gathered by index) and multiplies by the kept columns.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.core.layer_types import register_layer_type


class LoweredConv2d(nn.Module):
    def __init__(self, weight: torch.Tensor, fibres: torch.Tensor, bias: torch.Tensor | None,
                 kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]):
        """`weight` is (out_channels, K), the kept columns; `fibres` is (K, 3) rows of
        (input channel, kernel row, kernel column)."""
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.register_buffer("fibre_channel", fibres[:, 0].clone())
        self.register_buffer("fibre_row", fibres[:, 1].clone())
        self.register_buffer("fibre_col", fibres[:, 2].clone())
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), tuple(padding)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "LoweredConv2d":
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only ungrouped, undilated convolutions with zero padding can be lowered")
        w = conv.weight.detach()
        fibres = torch.nonzero((w != 0).any(dim=0))  # (K, 3): c, i, j with a non-zero column
        if len(fibres) == 0:
            fibres = torch.zeros(1, 3, dtype=torch.long)  # keep one (zero) column: a valid shape
        kept = w[:, fibres[:, 0], fibres[:, 1], fibres[:, 2]].contiguous()
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        return cls(kept, fibres, bias, conv.kernel_size, conv.stride, conv.padding)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        patches = x.unfold(2, kh, sh).unfold(3, kw, sw)  # view: (N, C, Ho, Wo, kh, kw)
        n, _, ho, wo = patches.shape[:4]
        # Advanced indexes separated by slices go first: (K, N, Ho, Wo), only the kept rows.
        rows = patches[:, self.fibre_channel, :, :, self.fibre_row, self.fibre_col]
        out = self.weight @ rows.reshape(rows.shape[0], -1)  # (out, N·Ho·Wo)
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.view(-1, n, ho, wo).transpose(0, 1)

    def extra_repr(self) -> str:
        return (f"kept_fibres={self.weight.shape[1]}, out_channels={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}")


register_layer_type(LoweredConv2d, trace_leaf=True)
