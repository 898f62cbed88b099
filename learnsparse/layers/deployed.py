"""Deployed layers: what trained layers become after export."""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.core.layer_types import register_layer_type

from .channel_ops import channel_shuffle, select_channels


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return channel_shuffle(x, self.groups)


class IndexSelectGroupConv(nn.Module):
    """index_select of the kept inputs → Conv2d(groups=G) → shuffle back to interleaved order."""

    def __init__(self, index: torch.Tensor, conv: nn.Conv2d, in_channels: int | None = None):
        super().__init__()
        self.register_buffer("index", index)
        self.conv = conv
        self.groups = conv.groups
        # Channels of the layer's input (the gather may skip the last ones).
        self.in_channels = in_channels if in_channels is not None else int(index.max()) + 1
        self.out_channels = conv.out_channels

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
        return cls(index.reshape(-1), conv.to(w.device), lgc.in_channels)

    def forward(self, x):
        y = self.conv(select_channels(x, self.index))
        return channel_shuffle(y, self.groups) if self.groups > 1 else y

    @torch.no_grad()
    def dense_form(self) -> nn.Conv2d:
        """The same function as one plain conv over all inputs, its zeros baked in."""
        w = self.conv.weight.detach()
        out, _, kh, kw = w.shape
        g = self.groups
        block = ungrouped_weight(self.conv)  # over the gathered inputs
        full = torch.zeros(out, self.in_channels, kh, kw, dtype=w.dtype, device=w.device)
        full.index_add_(1, self.index, block)
        # Output o = j·G + g is the grouped conv's filter g·(out/G) + j (the shuffle).
        order = torch.arange(out, device=w.device).reshape(g, out // g).t().reshape(-1)
        bias = self.conv.bias.detach()[order] if self.conv.bias is not None else None
        return conv_with(full[order], bias, self.conv)


def ungrouped_weight(conv: nn.Conv2d) -> torch.Tensor:
    """A (grouped) conv's weight as the [out, in, kh, kw] kernel of the equal ungrouped conv:
    each group's block on the diagonal, zeros elsewhere."""
    w, g = conv.weight.detach(), conv.groups
    out, per_in = w.shape[:2]
    per_out = out // g
    full = w.new_zeros(out, per_in * g, *w.shape[2:])
    for k in range(g):
        full[k * per_out:(k + 1) * per_out, k * per_in:(k + 1) * per_in] = w[k * per_out:(k + 1) * per_out]
    return full


def conv_with(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Conv2d) -> nn.Conv2d:
    """A plain nn.Conv2d holding `weight` (and `bias`), with `like`'s stride and padding."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), like.stride, like.padding,
                     bias=bias is not None).to(weight.device)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


# A deployed layer is its own sparse form; the dense form lets the export's tactics (and a
# network condensed in place during training) fall back to a plain conv where that is faster.
register_layer_type(IndexSelectGroupConv, index_addressed=True, converter=lambda m: m,
                    dense_form=IndexSelectGroupConv.dense_form)
