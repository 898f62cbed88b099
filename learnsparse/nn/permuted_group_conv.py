"""The deployed form of an FLGConv: gather inputs into group order → one grouped conv →
outputs back to the original filter order.

Groups of unequal sizes are padded to the largest: padding input slots read channel 0 with
zero weights, padding filters are computed and dropped by the output index. One grouped
conv call was faster here than a conv per group plus a concatenation (docs/flgc.md).
Either index may be None once `fold_permutations` has moved it into a neighbouring layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class PermutedGroupConv(nn.Module):
    def __init__(self, conv: nn.Conv2d, in_index: torch.Tensor | None, out_index: torch.Tensor | None):
        super().__init__()
        self.conv = conv
        self.register_buffer("in_index", in_index)
        self.register_buffer("out_index", out_index)

    @classmethod
    def from_assignment(cls, weight: torch.Tensor, bias: torch.Tensor | None, in_group: torch.Tensor,
                        out_group: torch.Tensor, groups: int, stride, padding) -> "PermutedGroupConv":
        """Vectorized: each filter's kept inputs are gathered with one index per group slot."""
        w = weight.detach()
        out_ch, in_ch, kh, kw = w.shape
        in_sizes = torch.bincount(in_group, minlength=groups)
        out_sizes = torch.bincount(out_group, minlength=groups)
        max_in, max_out = int(in_sizes.max()), int(out_sizes.max())
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
        identity_in = in_index.numel() == in_ch and bool((in_index == torch.arange(in_ch, device=w.device)).all())
        identity_out = position.numel() == groups * max_out and bool(
            (position == torch.arange(out_ch, device=w.device)).all())
        return cls(conv, None if identity_in else in_index, None if identity_out else position)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_index is not None:
            x = x.index_select(1, self.in_index)
        y = self.conv(x)
        return y.index_select(1, self.out_index) if self.out_index is not None else y


def _slots(group: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """[G, width]: the members of each group in ascending order, -1 padded."""
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(group), device=group.device) - starts[group[order]]
    slots = torch.full((groups, width), -1, dtype=torch.long, device=group.device)
    slots[group[order], rank] = order
    return slots
