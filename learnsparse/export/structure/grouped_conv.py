"""Grouped convolutions in the dependency graph: what may leave them, and how.

A conv with G groups (not depthwise) reads input channel i in group i // (in/G) and writes
output channel o in group o // (out/G). Removing channels keeps it a valid grouped conv only
when every group loses the same number of them; each group may lose different ones. So a set
of dead channels that touches a grouped conv is cut down to the same count per group (the
lowest-numbered dead ones of each), and what is left over stays as zeros.

Torch-Pruning's conv pruner keeps the first channels of the weight's input dimension for
every group (its issues #9, #328), which is wrong or out of bounds for grouped convs: the
pruner here gathers each group's own columns.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch_pruning.pruner import function


def is_grouped(m) -> bool:
    """A conv with groups that are not one channel each (depthwise convs keep their own rule)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


def _group_width(m: nn.Conv2d, outputs: bool) -> int:
    return (m.out_channels if outputs else m.in_channels) // m.groups


def equal_per_group(m: nn.Conv2d, idxs: list[int], outputs: bool) -> list[int]:
    """The largest subset of `idxs` (channel indices of `m`'s outputs or inputs) that removes the
    same count from every group: the lowest-numbered `k` of each, `k` the smallest group's count."""
    width = _group_width(m, outputs)
    per_group: list[list[int]] = [[] for _ in range(m.groups)]
    for i in sorted(set(idxs)):
        per_group[i // width].append(i)
    k = min(len(g) for g in per_group)
    if k == width:
        k -= 1  # a group keeps one channel: the conv keeps its group count
    return sorted(i for g in per_group for i in g[:k])


def _check_equal(m: nn.Conv2d, idxs, outputs: bool) -> None:
    if equal_per_group(m, idxs, outputs) != sorted(set(idxs)):
        side = "output" if outputs else "input"
        raise ValueError(f"grouped conv (groups={m.groups}): {side} channels {sorted(idxs)} are not the same count "
                         "from every group")


class GroupedConvPruner(function.ConvPruner):
    """Torch-Pruning's conv pruner, right for grouped convs: equal counts per group, each group
    pruning its own input columns."""

    def prune_out_channels(self, layer: nn.Module, idxs):
        if is_grouped(layer):
            _check_equal(layer, idxs, outputs=True)
        return super().prune_out_channels(layer, idxs)

    def prune_in_channels(self, layer: nn.Module, idxs):
        if not is_grouped(layer) or layer.transposed:
            return super().prune_in_channels(layer, idxs)
        _check_equal(layer, idxs, outputs=False)
        width, drop = _group_width(layer, outputs=False), set(idxs)
        out_width = layer.out_channels // layer.groups
        w = layer.weight.detach()
        pieces = []
        for g in range(layer.groups):
            keep = [c for c in range(width) if g * width + c not in drop]
            rows = w[g * out_width:(g + 1) * out_width]
            pieces.append(rows.index_select(1, torch.as_tensor(keep, device=w.device)))
        grad = layer.weight.grad
        layer.in_channels -= len(drop)
        layer.weight = nn.Parameter(torch.cat(pieces, 0).contiguous())
        if grad is not None:  # sliced the same way, as Torch-Pruning does for the others
            layer.weight.grad = torch.cat([grad[g * out_width:(g + 1) * out_width].index_select(
                1, torch.as_tensor([c for c in range(width) if g * width + c not in drop], device=w.device))
                for g in range(layer.groups)], 0)
        return layer
