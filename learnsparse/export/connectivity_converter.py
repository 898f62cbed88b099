"""One exporter for any connection matrix.

The connected components of the bipartite graph of a conv's connection matrix are the groups
it really has, wherever its channels sit. Gathering each block's inputs together and placing
its outputs back is what `PermutedGroupConv` does: equal blocks become one `Conv2d(groups=G)`,
uneven blocks per-group convs (or one padded grouped conv when padding wastes little), and a
block that is not complete keeps its zeros inside its own conv. A matrix that is one block is
a plain conv with its zeros baked in. The index gathers fold into neighbouring layers where
they can (`fold_permutations`), and the export's tactics choose, per layer, between this form
and the dense one by measured time.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.connectivity import Matrix, blocks, connectivity_of
from learnsparse.layer_types import register_layer_type
from learnsparse.nn.connectivity_conv import ConnectivityConv
from learnsparse.nn.permuted_group_conv import PermutedGroupConv

from .dense_form import plain_conv


def from_connectivity(weight: torch.Tensor, bias: torch.Tensor | None, matrix: Matrix, stride, padding,
                      layout: str = "auto") -> nn.Module:
    """The deployed conv computing conv2d(x, weight ⊙ matrix, bias): grouped by the matrix's blocks."""
    matrix = matrix.to(weight.device).bool()
    masked = weight.detach() * matrix[:, :, None, None].to(weight.dtype)
    out_block, in_block, count = blocks(matrix)
    if count <= 1 and bool((out_block >= 0).all()) and bool((in_block >= 0).all()):
        return plain_conv(masked, bias.detach() if bias is not None else None, _Geometry(stride, padding))
    # Outputs with no input are their bias alone: one extra group with no inputs holds them
    # (the padded layout gives them zero weights); unread inputs go to a group with no outputs.
    out_group = torch.where(out_block >= 0, out_block, count)
    in_group = torch.where(in_block >= 0, in_block, count + 1)
    # Number only the groups that exist: an empty group would still cost a padded slot.
    used, compact = torch.unique(torch.cat([out_group, in_group]), return_inverse=True)
    out_group, in_group = compact[:len(out_group)].to(weight.device), compact[len(out_group):].to(weight.device)
    return PermutedGroupConv.from_assignment(masked, bias, in_group, out_group, len(used), stride, padding, layout)


class _Geometry:
    def __init__(self, stride, padding):
        self.stride, self.padding = stride, padding


def convert(m: ConnectivityConv) -> nn.Module:
    return from_connectivity(m.weight, m.bias, m.connectivity(), m.stride, m.padding)


def dense_form(m: ConnectivityConv) -> nn.Conv2d:
    return plain_conv(m.weight.detach() * m.mask(), m.bias.detach() if m.bias is not None else None, m)


register_layer_type(ConnectivityConv, converter=convert, dense_form=dense_form,
                    save_structure=lambda m: {"connection": connectivity_of(m).clone()},
                    restore_structure=lambda m, s: m.connection.copy_(s["connection"]))
