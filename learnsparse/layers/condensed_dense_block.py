"""The deployed form of a CondenseNet dense block.

Two forms compute the same function:

- **plain ops** — what `torch.export`, ONNX, `torch.compile` and autograd see: per layer a
  channel Gather of the kept inputs → BatchNorm → ReLU → grouped 1x1 `Conv` (the second
  BatchNorm folded in) → ReLU → a channel Gather that restores the interleaved filter order
  → grouped 3x3 `Conv`, and a `Concat` per layer as in DenseNet. Graph runtimes fuse and
  schedule these themselves; the graph has the dense network's nodes plus the Gathers.
- **the eager CPU path** — at inference in eager PyTorch only. Two costs made the reference
  conversion slower than the masked model on a CPU: `torch.cat` copies the whole growing
  feature map at every layer, and the shuffle is one more full pass. Here the block owns one
  output buffer that every layer writes its new channels into, each layer reads its inputs
  from it by index, gather + BatchNorm + grouped 1x1 are one embedding_bag pass and one
  matmul, and the shuffle is done by the pass that applies the ReLU (docs/performance.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.core.layer_types import register_layer_type

from .channel_ops import capturing_graph, select_channels


class CondensedDenseLayer(nn.Module):
    """index_select → BN → ReLU → grouped 1x1 (BN folded) → ReLU → shuffle → grouped 3x3."""

    def __init__(self, index: torch.Tensor, norm1: nn.BatchNorm2d, conv1: nn.Conv2d, conv2: nn.Conv2d):
        super().__init__()
        self.register_buffer("index", index)
        self.norm1, self.conv1, self.conv2 = norm1, conv1, conv2
        self.groups = conv1.groups
        self.group_out, self.group_in = conv1.out_channels // conv1.groups, conv1.in_channels // conv1.groups
        # Position k·G + g of the interleaved order holds group-contiguous channel g·(out/G) + k.
        order = torch.arange(conv1.out_channels, device=index.device)
        self.register_buffer("shuffle", order.view(self.groups, self.group_out).t().reshape(-1))
        self.growth = conv2.out_channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The new channels from the block's features so far, in plain ops."""
        x = F.relu(self.norm1(select_channels(features, self.index)))
        y = F.relu(self.conv1(x))
        return self.conv2(select_channels(y, self.shuffle))

    def new_features(self, buffer: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """The eager path: `table` is the block's storage viewed as one row per (image,
        channel) plane plus a row of ones at the end (CondensedDenseBlock.forward)."""
        b, _, h, w = buffer.shape
        g, cg = self.groups, self.group_out
        y = self._fused_bottleneck(table, buffer.shape)
        z = torch.empty((b, g * cg, h, w), dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
        # ReLU and shuffle in one pass: read group-contiguous (g, k), write interleaved k·G + g, NHWC.
        torch.clamp_min(y.view(b, g, cg, h * w), 0.0,
                        out=z.permute(0, 2, 3, 1).view(b, h * w, cg, g).permute(0, 3, 2, 1))
        return self.conv2(z)

    def _fused_bottleneck(self, table: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """conv1(relu(norm1(gather))) with one pass over the gathered planes instead of
        four. `embedding_bag` forms each selected plane as `scale · plane + shift · ones` (a
        bag of two table rows: the plane and the ones row), so gather and the BatchNorm are
        one op; each group also gets one plane of ones, through which the matmul adds the
        conv's bias. Measured in docs/performance.md."""
        b, channels, h, w = shape
        indices, offsets, weights, weight1 = self._fused_operands(b, channels, table)
        x = F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=weights).relu_()
        return torch.matmul(weight1, x.view(b, self.groups, self.group_in + 1, h * w))

    def _fused_operands(self, b: int, channels: int, table: torch.Tensor):
        """Bag indices, offsets and weights, and the 1x1 weights with their bias column; cached,
        because rebuilding them is a dozen small ops per layer, which at batch 1 costs more than
        the passes saved. The key holds the tensors' versions: loading new weights rebuilds."""
        n1, conv1 = self.norm1, self.conv1
        sources = (n1.weight, n1.bias, n1.running_mean, n1.running_var, self.index, conv1.weight, conv1.bias)
        key = (b, channels, table.device, table.dtype, table.shape[0], *(t._version for t in sources))
        cached = getattr(self, "_fused_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        g, gi, cg, dev = self.groups, self.group_in, self.group_out, table.device
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
        weight1 = torch.cat([conv1.weight.reshape(g, cg, gi), conv1.bias.reshape(g, cg, 1)], 2)
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
        if self.training or torch.is_grad_enabled() or capturing_graph():
            # Training, autograd and graph capture (torch.export, ONNX, torch.compile): plain ops.
            for layer in self.layers:
                x = torch.cat([x, layer(x)], 1)
            return x
        b, _, h, w = x.shape
        # One allocation: the NCHW block buffer, then a row of ones that the fused
        # gather-normalize pass reads as the bias's input.
        planes = b * self.out_channels
        flat = x.new_empty((planes + 1) * h * w)
        flat[planes * h * w:] = 1
        buffer = flat[: planes * h * w].view(b, self.out_channels, h, w)
        table = flat.view(planes + 1, h * w)
        buffer[:, : self.in_channels] = x
        c = self.in_channels
        for layer in self.layers:
            buffer[:, c: c + layer.growth] = layer.new_features(buffer, table)
            c += layer.growth
        return buffer


register_layer_type(CondensedDenseBlock, index_addressed=True)
