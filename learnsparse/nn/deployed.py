"""Deployed layers: what trained layers become after export."""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.layer_types import register_layer_type


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Group-contiguous channel order (g, k) → interleaved order k·G + g."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return channel_shuffle(x, self.groups)


class IndexSelectGroupConv(nn.Module):
    """index_select of the kept inputs → Conv2d(groups=G) → shuffle back to interleaved order."""

    def __init__(self, index: torch.Tensor, conv: nn.Conv2d):
        super().__init__()
        self.register_buffer("index", index)
        self.conv = conv
        self.groups = conv.groups
        self.in_channels, self.out_channels = int(index.max()) + 1, conv.out_channels

    @classmethod
    def from_trained(cls, lgc) -> "IndexSelectGroupConv":
        """Vectorized: one gather builds every group's weights at once."""
        g, out = lgc.groups, lgc.out_channels
        index = lgc.kept_index()  # [G, kept]
        w = lgc.conv.weight.detach()
        kh, kw = w.shape[-2:]
        # Filter o = k·G + g goes to position g·(out/G) + k of the grouped conv.
        w = w.reshape(out // g, g, lgc.in_channels, kh, kw).transpose(0, 1)
        w = torch.gather(w, 2, index[:, None, :, None, None].expand(-1, out // g, -1, kh, kw))
        conv = nn.Conv2d(index.numel(), out, (kh, kw), lgc.conv.stride, lgc.conv.padding, groups=g,
                         bias=lgc.conv.bias is not None)
        conv.weight.data.copy_(w.reshape(out, -1, kh, kw))
        if lgc.conv.bias is not None:
            conv.bias.data.copy_(lgc.conv.bias.detach().reshape(out // g, g).t().reshape(-1))
        return cls(index.reshape(-1), conv.to(w.device))

    def forward(self, x):
        y = self.conv(x.index_select(1, self.index))
        return channel_shuffle(y, self.groups) if self.groups > 1 else y


register_layer_type(IndexSelectGroupConv, index_addressed=True)
