"""Pictures of which inputs each filter reads: rows are filters, columns input channels."""
from __future__ import annotations

import torch

from learnsparse.nn.learned_group_conv import LearnedGroupConv

_PALETTE = torch.tensor([[0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16],
                         [0.58, 0.4, 0.74], [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.5, 0.5, 0.5]])


def connectivity_image(layer: LearnedGroupConv, cell: int = 2, gap: int = 1) -> torch.Tensor:
    """[3, H, W] in [0, 1]: a filled cell where filter o reads input c; filters grouped by
    group (o mod G), a grey line between groups, each group in its own colour."""
    g, out = layer.groups, layer.out_channels
    mask = layer.mask.detach().float().cpu()  # [G, in]
    per = out // g
    rows = []
    for i in range(g):
        colour = _PALETTE[i % len(_PALETTE)][:, None, None]
        block = mask[i].expand(per, -1)  # every filter of group i reads the same inputs
        rgb = 1 - block[None] * (1 - colour)  # white where absent, the group's colour where present
        rows.append(rgb)
        if i < g - 1:
            rows.append(torch.full((3, gap, mask.shape[1]), 0.6))
    img = torch.cat(rows, dim=1)
    return img.repeat_interleave(cell, 1).repeat_interleave(cell, 2).clamp(0, 1)


def weight_connectivity_image(weight: torch.Tensor, cell: int = 2) -> torch.Tensor:
    """[3, out, in] (scaled by `cell`) in [0, 1] for a conv or linear weight: dark where filter
    o reads input channel c through any non-zero weight, white where that kernel is all zero."""
    w = weight.detach().float().cpu()
    connected = (w.flatten(2) != 0).any(dim=2) if w.dim() > 2 else (w != 0)
    img = (1 - 0.85 * connected.float())[None].expand(3, -1, -1)
    return img.repeat_interleave(cell, 1).repeat_interleave(cell, 2).contiguous()


def grouped_connectivity_image(layer, cell: int = 2) -> torch.Tensor:
    """[3, out, in] for an FLGConv: rows (filters) and columns (inputs) sorted by group, so the
    learned grouping shows as blocks on the diagonal, each group in its own colour."""
    in_group, out_group = (t.detach().cpu() for t in layer.assignments())
    rows, cols = torch.argsort(out_group, stable=True), torch.argsort(in_group, stable=True)
    same = (out_group[rows][:, None] == in_group[cols][None, :]).float()
    colour = _PALETTE[out_group[rows] % len(_PALETTE)].t()[:, :, None]  # [3, out, 1]
    img = 1 - same[None] * (1 - colour)
    return img.repeat_interleave(cell, 1).repeat_interleave(cell, 2).clamp(0, 1)
