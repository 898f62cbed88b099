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

from learnsparse.layer_types import register_layer_type
import torch.nn.functional as F


class CondensedDenseLayer(nn.Module):
    """index_select → BN → ReLU → grouped 1x1 (batched matmul) → BN → ReLU+shuffle → grouped 3x3.

    At inference the first four steps are one gather pass and one matmul (`_fused_bottleneck`).

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

    def new_features(self, buffer: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """`table`: the block's storage viewed as one row per (image, channel) plane plus a row
        of ones at the end (CondensedDenseBlock.forward); without it, the plain ops."""
        b, _, h, w = buffer.shape
        g, cg = self.groups, self.group_out
        if table is None:
            x = F.relu(self.norm1(buffer.index_select(1, self.index)), inplace=True)
            y = torch.matmul(self.weight1, x.view(b, g, self.group_in, h * w))  # [B, G, out/G, HW]
            y = self.norm2(y.view(b, g * cg, h, w))
        else:
            y = self._fused_bottleneck(table, buffer.shape)
        if torch.compiler.is_compiling() or y.requires_grad:
            # Graph capture (torch.export, ONNX) and autograd refuse out= writes; same function.
            z = y.view(b, g, cg, h * w).transpose(1, 2).relu().reshape(b, g * cg, h, w)
            return self.conv2(z)
        z = torch.empty((b, g * cg, h, w), dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
        # ReLU and shuffle in one pass: read group-contiguous (g, k), write interleaved k·G + g, NHWC.
        torch.clamp_min(y.view(b, g, cg, h * w), 0.0,
                        out=z.permute(0, 2, 3, 1).view(b, h * w, cg, g).permute(0, 3, 2, 1))
        return self.conv2(z)

    def _fused_bottleneck(self, table: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """norm2(W1 · relu(norm1(gather))) with one pass over the gathered planes instead of
        four. `embedding_bag` forms each selected plane as `scale · plane + shift · ones` (a
        bag of two table rows: the plane and the ones row), so gather and the first BatchNorm
        are one op; each group also gets one plane of ones, through which the matmul adds the
        second BatchNorm's shift (its scale is folded into W1's rows). Measured in
        docs/performance.md."""
        b, channels, h, w = shape
        indices, offsets, weights, weight1 = self._fused_operands(b, channels, table)
        x = F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=weights).relu_()
        return torch.matmul(weight1, x.view(b, self.groups, self.group_in + 1, h * w))

    def _fused_operands(self, b: int, channels: int, table: torch.Tensor):
        """Bag indices, offsets and weights, and W1 with the second BatchNorm folded in; cached,
        because rebuilding them is a dozen small ops per layer, which at batch 1 costs more than
        the passes saved. The key holds the tensors' versions: loading new weights rebuilds."""
        n1, n2 = self.norm1, self.norm2
        sources = (n1.weight, n1.bias, n1.running_mean, n1.running_var, self.index, self.weight1,
                   n2.weight, n2.bias, n2.running_mean, n2.running_var)
        key = (b, channels, table.device, table.dtype, table.shape[0], *(t._version for t in sources))
        cached = getattr(self, "_fused_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        g, gi, dev = self.groups, self.group_in, table.device
        ones_row = table.shape[0] - 1
        s1 = n1.weight * torch.rsqrt(n1.running_var + n1.eps)
        t1 = n1.bias - n1.running_mean * s1
        # Per group: its gathered inputs, then one plane of ones (0 · ones + 1 · ones).
        scale = torch.cat([s1.view(g, gi), s1.new_zeros(g, 1)], 1)
        shift = torch.cat([t1.view(g, gi), t1.new_ones(g, 1)], 1)
        planes = torch.arange(b, device=dev)[:, None, None] * channels + self.index.view(g, gi)
        planes = torch.cat([planes, planes.new_full((b, g, 1), ones_row)], 2).reshape(-1)
        indices = torch.stack([planes, torch.full_like(planes, ones_row)], 1).reshape(-1)
        offsets = torch.arange(0, indices.numel(), 2, device=dev)
        weights = torch.stack([scale.expand(b, g, gi + 1), shift.expand(b, g, gi + 1)], 3).reshape(-1)
        s2 = n2.weight * torch.rsqrt(n2.running_var + n2.eps)
        t2 = n2.bias - n2.running_mean * s2
        weight1 = torch.cat([self.weight1 * s2.view(g, -1, 1), t2.view(g, -1, 1)], 2)
        operands = (indices, offsets, weights.to(table.dtype).detach(), weight1.to(table.dtype).detach())
        self._fused_cache = (key, operands)
        return operands


class CondensedDenseBlock(nn.Module):
    def __init__(self, layers: list[CondensedDenseLayer], in_channels: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.in_channels = in_channels
        self.out_channels = in_channels + sum(layer.growth for layer in layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        fused = not (self.training or torch.is_grad_enabled() or torch.compiler.is_compiling())
        if fused:
            # One allocation: the NCHW block buffer, then a row of ones that the fused
            # gather-normalize pass reads as the BatchNorm shift's input.
            planes = b * self.out_channels
            flat = x.new_empty((planes + 1) * h * w)
            flat[planes * h * w:] = 1
            buffer = flat[: planes * h * w].view(b, self.out_channels, h, w)
            table = flat.view(planes + 1, h * w)
        else:  # training, autograd and graph capture (torch.export, ONNX): plain ops
            buffer, table = x.new_empty(b, self.out_channels, h, w), None
        buffer[:, : self.in_channels] = x
        c = self.in_channels
        for layer in self.layers:
            buffer[:, c: c + layer.growth] = layer.new_features(buffer, table)
            c += layer.growth
        return buffer


register_layer_type(CondensedDenseBlock, index_addressed=True)
