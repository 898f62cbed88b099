"""The deployed form of a CondenseNet dense block.

Two costs make the reference conversion slower than the masked model it came from on a
CPU: `torch.cat` copies the whole growing feature map at every layer, and the channel
shuffle is one more full pass over the bottleneck. Here the block owns one output buffer
that every layer writes its new channels into (no concatenation), and each layer reads its
inputs straight from that buffer by index. The shuffle is done by the same pass that applies
the ReLU (a strided read written contiguously), so it costs no extra pass. See
CondensedDenseLayer for the layout of each step.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CondensedDenseLayer(nn.Module):
    """index_select → BN → ReLU → grouped 1x1 (batched matmul) → BN → ReLU+shuffle → grouped 3x3.

    Layouts are chosen per op, by measurement on CPU (docs/performance.md): the block buffer
    is NCHW, where a channel gather copies whole planes; the grouped 1x1 conv is a batched
    matmul over groups, many times faster than oneDNN's grouped 1x1 on NCHW; the ReLU+shuffle
    pass writes channels-last, the layout where oneDNN's grouped 3x3 conv is fastest.
    """

    def __init__(self, index: torch.Tensor, norm1: nn.BatchNorm2d, weight1: torch.Tensor, norm2: nn.BatchNorm2d,
                 conv2: nn.Conv2d):
        super().__init__()
        self.register_buffer("index", index)
        self.norm1, self.norm2, self.conv2 = norm1, norm2, conv2
        self.weight1 = nn.Parameter(weight1)  # [G, out/G, in/G]: group g's 1x1 filters
        self.groups, self.group_out, self.group_in = weight1.shape
        self.growth = conv2.out_channels

    def new_features(self, buffer: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(buffer.index_select(1, self.index)), inplace=True)
        b, _, h, w = x.shape
        g, cg = self.groups, self.group_out
        y = torch.matmul(self.weight1, x.view(b, g, self.group_in, h * w))  # [B, G, out/G, HW]
        y = self.norm2(y.view(b, g * cg, h, w))
        if torch.compiler.is_compiling() or y.requires_grad:
            # Graph capture (torch.export, ONNX) and autograd refuse out= writes; same function.
            z = y.view(b, g, cg, h * w).transpose(1, 2).relu().reshape(b, g * cg, h, w)
            return self.conv2(z)
        z = torch.empty((b, g * cg, h, w), dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
        # ReLU and shuffle in one pass: read group-contiguous (g, k), write interleaved k·G + g, NHWC.
        torch.clamp_min(y.view(b, g, cg, h * w), 0.0,
                        out=z.permute(0, 2, 3, 1).view(b, h * w, cg, g).permute(0, 3, 2, 1))
        return self.conv2(z)


class CondensedDenseBlock(nn.Module):
    def __init__(self, layers: list[CondensedDenseLayer], in_channels: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.in_channels = in_channels
        self.out_channels = in_channels + sum(layer.growth for layer in layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        buffer = x.new_empty(b, self.out_channels, h, w)
        buffer[:, : self.in_channels] = x
        c = self.in_channels
        for layer in self.layers:
            buffer[:, c: c + layer.growth] = layer.new_features(buffer)
            c += layer.growth
        return buffer
