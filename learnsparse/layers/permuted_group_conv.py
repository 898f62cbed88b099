"""The deployed form of an FLGConv: gather inputs into group order → grouped compute →
outputs back to the original filter order.

Two layouts compute the groups, chosen per layer by `choose_layout`:
- "padded": one `Conv2d(groups=G)`, every group padded to the largest (padding input slots read
  channel 0 with zero weights, padding filters are computed and dropped by the output index);
- "split": one conv per group on its slice of the gathered input, concatenated — no padding
  work, at the cost of one call per group.
Either index may be None once `fold_permutations` has moved it into a neighbouring layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.core.layer_types import register_layer_type

from .channel_ops import select_channels

# Split when padding would add more than this fraction of work (docs/flgc.md, "Export speed").
PADDING_WASTE_LIMIT = 1.15


class PermutedGroupConv(nn.Module):
    def __init__(self, conv: nn.Conv2d | nn.ModuleList, in_index: torch.Tensor | None,
                 out_index: torch.Tensor | None, in_channels: int | None = None):
        super().__init__()
        self.conv = conv
        self.register_buffer("in_index", in_index)
        self.register_buffer("out_index", out_index)
        # Channels of the layer's input (the gather may read only some of them).
        convs = list(conv) if isinstance(conv, nn.ModuleList) else [conv]
        self.in_channels = in_channels if in_channels is not None else (
            int(in_index.max()) + 1 if in_index is not None else sum(c.in_channels for c in convs))

    @property
    def layout(self) -> str:
        return "split" if isinstance(self.conv, nn.ModuleList) else "padded"

    @property
    def computed_channels(self) -> int:
        """Channels the grouped compute produces (padding filters included)."""
        if isinstance(self.conv, nn.ModuleList):
            return sum(c.out_channels for c in self.conv)
        return self.conv.out_channels

    @classmethod
    def from_assignment(cls, weight: torch.Tensor, bias: torch.Tensor | None, in_group: torch.Tensor,
                        out_group: torch.Tensor, groups: int, stride, padding,
                        layout: str = "auto") -> "PermutedGroupConv":
        """Vectorized: each filter's kept inputs are gathered with one index per group slot."""
        if layout == "auto":
            layout = choose_layout(in_group, out_group, groups)
        if layout == "split":
            return cls._split(weight, bias, in_group, out_group, groups, stride, padding)
        w = weight.detach()
        out_ch, in_ch, kh, kw = w.shape
        max_in = int(torch.bincount(in_group, minlength=groups).max())
        max_out = int(torch.bincount(out_group, minlength=groups).max())
        # Slot (g, r) holds the r-th input (filter) of group g; empty slots point at 0.
        in_slots = _slots(in_group, groups, max_in)    # [G, max_in], -1 where empty
        out_slots = _slots(out_group, groups, max_out)  # [G, max_out]
        rows = out_slots.clamp_min(0)[:, :, None].expand(-1, -1, max_in)
        cols = in_slots.clamp_min(0)[:, None, :].expand(-1, max_out, -1)
        kept = w[rows, cols]  # [G, max_out, max_in, kh, kw]
        valid = (out_slots >= 0)[:, :, None] & (in_slots >= 0)[:, None, :]
        kept = kept * valid[..., None, None].to(w.dtype)
        conv = nn.Conv2d(groups * max_in, groups * max_out, (kh, kw), stride, padding, groups=groups,
                         bias=bias is not None).to(w.device)
        conv.weight.data.copy_(kept.reshape(groups * max_out, max_in, kh, kw))
        if bias is not None:
            conv.bias.data.copy_((bias.detach()[out_slots.clamp_min(0)] * (out_slots >= 0)).reshape(-1))
        in_index = in_slots.clamp_min(0).reshape(-1)
        # Filter o sits at slot position g·max_out + r in the conv's output.
        position = torch.empty(out_ch, dtype=torch.long, device=w.device)
        flat = out_slots.reshape(-1)
        position[flat[flat >= 0]] = torch.nonzero(flat >= 0).flatten()
        return cls(conv, _unless_identity(in_index, in_ch), _unless_identity(position, out_ch, groups * max_out), in_ch)

    @classmethod
    def _split(cls, weight, bias, in_group, out_group, groups, stride, padding) -> "PermutedGroupConv":
        w = weight.detach()
        out_ch, in_ch, kh, kw = w.shape
        in_order = torch.argsort(in_group, stable=True)    # inputs, group by group
        out_order = torch.argsort(out_group, stable=True)  # filters, group by group
        convs = nn.ModuleList()
        for g in range(groups):
            ins, outs = in_order[in_group[in_order] == g], out_order[out_group[out_order] == g]
            if len(outs) == 0:
                continue
            if len(ins) == 0:
                raise ValueError(f"group {g} has filters but no inputs: use the padded layout")
            conv = nn.Conv2d(len(ins), len(outs), (kh, kw), stride, padding, bias=bias is not None).to(w.device)
            conv.weight.data.copy_(w[outs][:, ins])
            if bias is not None:
                conv.bias.data.copy_(bias.detach()[outs])
            convs.append(conv)
        # Groups that compute nothing are skipped, so the input keeps only the groups that do.
        used = torch.isin(in_group[in_order], out_group)
        position = torch.empty(out_ch, dtype=torch.long, device=w.device)
        position[out_order] = torch.arange(out_ch, device=w.device)
        return cls(convs, _unless_identity(in_order[used], in_ch), _unless_identity(position, out_ch), in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_index is not None:
            x = select_channels(x, self.in_index)
        if isinstance(self.conv, nn.ModuleList):
            parts = x.split([c.in_channels for c in self.conv], dim=1)
            y = torch.cat([conv(part) for conv, part in zip(self.conv, parts)], dim=1)
        else:
            y = self.conv(x)
        return select_channels(y, self.out_index) if self.out_index is not None else y


    @torch.no_grad()
    def dense_form(self) -> nn.Conv2d:
        """The same function as one plain conv over all inputs, its zeros baked in."""
        from .deployed import conv_with, ungrouped_weight

        convs = list(self.conv) if isinstance(self.conv, nn.ModuleList) else [self.conv]
        first = convs[0]
        w0 = first.weight
        kh, kw = w0.shape[-2:]
        gathered = sum(c.in_channels for c in convs)
        computed = sum(c.out_channels for c in convs)
        block = torch.zeros(computed, gathered, kh, kw, dtype=w0.dtype, device=w0.device)
        bias = torch.zeros(computed, dtype=w0.dtype, device=w0.device)
        r = c = 0
        for conv in convs:  # each conv (or each group of the grouped conv) on its own inputs
            block[r:r + conv.out_channels, c:c + conv.in_channels] = ungrouped_weight(conv)
            if conv.bias is not None:
                bias[r:r + conv.out_channels] = conv.bias.detach()
            r, c = r + conv.out_channels, c + conv.in_channels
        index = self.in_index if self.in_index is not None else torch.arange(gathered, device=w0.device)
        full = torch.zeros(computed, self.in_channels, kh, kw, dtype=w0.dtype, device=w0.device)
        full.index_add_(1, index, block)  # padding slots read channel 0 with zero weights: they add 0
        rows = self.out_index if self.out_index is not None else torch.arange(computed, device=w0.device)
        has_bias = any(conv.bias is not None for conv in convs)
        return conv_with(full[rows], bias[rows] if has_bias else None, first)


def choose_layout(in_group: torch.Tensor, out_group: torch.Tensor, groups: int) -> str:
    """"split" when padding every group to the largest would cost more than PADDING_WASTE_LIMIT
    times the useful work; "padded" otherwise, and always when a group has filters but no
    inputs (there is no conv over zero channels; padding gives those filters their bias)."""
    in_sizes = torch.bincount(in_group, minlength=groups)
    out_sizes = torch.bincount(out_group, minlength=groups)
    if bool(((in_sizes == 0) & (out_sizes > 0)).any()):
        return "padded"
    useful = int((in_sizes * out_sizes).sum())
    padded = groups * int(in_sizes.max()) * int(out_sizes.max())
    return "split" if padded > PADDING_WASTE_LIMIT * useful else "padded"


def _unless_identity(index: torch.Tensor, size: int, length: int | None = None) -> torch.Tensor | None:
    """None when gathering with `index` would return the tensor unchanged."""
    if index.numel() != size or (length is not None and length != size):
        return index
    return None if bool((index == torch.arange(size, device=index.device)).all()) else index


def _slots(group: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """[G, width]: the members of each group in ascending order, -1 padded."""
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(group), device=group.device) - starts[group[order]]
    slots = torch.full((groups, width), -1, dtype=torch.long, device=group.device)
    slots[group[order], rank] = order
    return slots


def _computed_convs(layer: PermutedGroupConv) -> list[nn.Conv2d]:
    return list(layer.conv) if isinstance(layer.conv, nn.ModuleList) else [layer.conv]


# A deployed layer is its own sparse form; its dense form lets the export's tactics fall back to
# a plain conv (a model condensed in place during training exports through these).
register_layer_type(PermutedGroupConv, index_addressed=True, trace_leaf=True, computed_convs=_computed_convs,
                    output_position=lambda layer: layer.out_index, converter=lambda m: m,
                    dense_form=PermutedGroupConv.dense_form)
