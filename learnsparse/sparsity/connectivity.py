"""Pictures of which inputs each filter reads: rows are filters sorted by group, columns inputs."""
from __future__ import annotations

import torch

from learnsparse.nn.learned_group_conv import LearnedGroupConv


def connectivity_image(layer: LearnedGroupConv, cell: int = 2, gap: int = 1) -> torch.Tensor:
    """[3, H, W] in [0, 1]: a filled cell where filter o reads input c; filters grouped by
    group (o mod G), a grey line between groups, each group in its own colour."""
    g, out = layer.groups, layer.out_channels
    mask = layer.mask.detach().float().cpu()  # [G, in]
    per = out // g
    rows = []
    palette = torch.tensor([[0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16],
                            [0.58, 0.4, 0.74], [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.5, 0.5, 0.5]])
    for i in range(g):
        colour = palette[i % len(palette)][:, None, None]
        block = mask[i].expand(per, -1)  # every filter of group i reads the same inputs
        rgb = 1 - block[None] * (1 - colour)  # white where absent, the group's colour where present
        rows.append(rgb)
        if i < g - 1:
            rows.append(torch.full((3, gap, mask.shape[1]), 0.6))
    img = torch.cat(rows, dim=1)
    return img.repeat_interleave(cell, 1).repeat_interleave(cell, 2).clamp(0, 1)
