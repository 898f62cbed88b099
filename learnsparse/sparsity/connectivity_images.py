"""One picture of which inputs each output reads, for any layer or connection matrix.

Rows are outputs (filters), columns inputs; rows and columns are sorted by block (the
connected components of the connection graph: groups, wherever their channels sit), so a
grouping shows as blocks on the diagonal, each block in its own colour, and a partial table
(LeNet-5's C3) or random connections show as the one block they are.
"""
from __future__ import annotations

import torch

from learnsparse.core.hook_base import HookBase
from learnsparse.layers.connectivity import blocks, connectivity_of

_PALETTE = torch.tensor([[0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16],
                         [0.58, 0.4, 0.74], [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.5, 0.5, 0.5]])


def connectivity_image(layer_or_matrix, cell: int = 2) -> torch.Tensor:
    """[3, out·cell, in·cell] in [0, 1]: white where output o does not read input i, the colour
    of its block where it does; rows and columns grouped by block, channels with no connection
    last."""
    matrix = layer_or_matrix if isinstance(layer_or_matrix, torch.Tensor) else connectivity_of(layer_or_matrix)
    matrix = matrix.bool().cpu()
    out_block, in_block, count = blocks(matrix)
    last = count  # unconnected channels sort after every block
    rows = torch.argsort(torch.where(out_block >= 0, out_block, last), stable=True)
    cols = torch.argsort(torch.where(in_block >= 0, in_block, last), stable=True)
    present = matrix[rows][:, cols].float()
    colour = _PALETTE[out_block[rows].clamp_min(0) % len(_PALETTE)].t()[:, :, None]  # [3, out, 1]
    img = 1 - present[None] * (1 - colour)
    return img.repeat_interleave(cell, 1).repeat_interleave(cell, 2).clamp(0, 1).contiguous()


def fixed_sparse_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Layers whose connectivity is part of the architecture (they answer `connectivity()`)."""
    return [(name, m) for name, m in model.named_modules() if callable(getattr(m, "connectivity", None))]


class ConnectivityImages(HookBase):
    """At the start of training, the connection matrix of every layer that has one (fixed
    tables, IGC, learned groupings as they start) goes to `trainer.events` as an image, under
    the tag (`connectivity/<layer>`) the sparsity plugins update as the structure changes. The
    TensorBoard logger config attaches it."""
    name = "connectivity_images"

    def before_train(self) -> None:
        for name, layer in fixed_sparse_layers(self.trainer.unwrapped_model):
            self.trainer.events.put_image(f"connectivity/{name}", connectivity_image(layer), 0)
