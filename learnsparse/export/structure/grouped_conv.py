"""Grouped convolutions in the dependency graph: what may leave them, and how.

A conv with G groups (not depthwise) reads input channel i in group i // (in/G) and writes
output channel o in group o // (out/G). Removing channels keeps it a valid grouped conv in two
ways, and only these:

- **whole groups**: a group's inputs and its outputs go together, and the conv has G − 1
  groups. That needs both sides dead: a group whose filters are all zero reads nothing, so its
  inputs go wherever nothing else reads them, and its outputs go where they are zero.
  The inputs and the outputs are two dependency groups: the first one pruned takes the whole
  group's weights and counts, and leaves a note that the other side's indices are gone; the
  second one, pruned right after it, finds the note and only clears it (`_PENDING`). The
  conv keeps at least one group;
- **the same count from every other group**: each group may lose different ones (the
  lowest-numbered dead ones of each), and what is left over stays as zeros.

Torch-Pruning's conv pruner keeps the first channels of the weight's input dimension for
every group (its issues #9, #328), which is wrong or out of bounds for grouped convs: the
pruner here gathers each group's own columns.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch_pruning.pruner import function

# On a grouped conv whose whole groups went with one side: (the other side is outputs, its
# channel indices as numbered before), until that side's prune comes.
_PENDING = "_whole_groups_pending"


def is_grouped(m) -> bool:
    """A conv with groups that are not one channel each (depthwise convs keep their own rule)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


def _group_width(m: nn.Conv2d, outputs: bool) -> int:
    return (m.out_channels if outputs else m.in_channels) // m.groups


def channels_of(m: nn.Conv2d, groups, outputs: bool) -> list[int]:
    """The output (or input) channel indices of conv groups `groups`."""
    width = _group_width(m, outputs)
    return [g * width + c for g in sorted(groups) for c in range(width)]


def whole_groups(m: nn.Conv2d, idxs, outputs: bool) -> list[int]:
    """The groups whose every output (or input) channel is in `idxs`, at most all but one: the
    conv keeps its lowest-numbered group."""
    width, chosen = _group_width(m, outputs), set(idxs)
    whole = [g for g in range(m.groups) if all(g * width + c in chosen for c in range(width))]
    return whole[1:] if len(whole) == m.groups else whole


def equal_per_group(m: nn.Conv2d, idxs: list[int], outputs: bool, whole=()) -> list[int]:
    """The largest subset of `idxs` (channel indices of `m`'s outputs or inputs) that removes the
    groups `whole` entirely and the same count from every other group: the lowest-numbered `k`
    of each, `k` the smallest of those groups' counts."""
    width, whole = _group_width(m, outputs), set(whole)
    per_group: list[list[int]] = [[] for _ in range(m.groups)]
    for i in sorted(set(idxs)):
        per_group[i // width].append(i)
    rest = [g for g in range(m.groups) if g not in whole]
    k = min(len(per_group[g]) for g in rest)
    if k == width:
        k -= 1  # a group keeps one channel: the conv keeps its group count
    return sorted([i for g in rest for i in per_group[g][:k]] + channels_of(m, whole, outputs))


def _check_equal(m: nn.Conv2d, idxs, outputs: bool, whole=()) -> None:
    if equal_per_group(m, idxs, outputs, whole) != sorted(set(idxs)):
        side = "output" if outputs else "input"
        raise ValueError(f"grouped conv (groups={m.groups}): {side} channels {sorted(idxs)} are neither whole groups "
                         "nor the same count from every group")


class GroupedConvPruner(function.ConvPruner):
    """Torch-Pruning's conv pruner, right for grouped convs: whole groups, or equal counts per
    group, each group pruning its own input columns."""

    def prune_out_channels(self, layer: nn.Module, idxs):
        if _PENDING in layer.__dict__ or is_grouped(layer):
            return _prune_grouped(layer, idxs, outputs=True)
        return super().prune_out_channels(layer, idxs)

    def prune_in_channels(self, layer: nn.Module, idxs):
        if not layer.transposed and (_PENDING in layer.__dict__ or is_grouped(layer)):
            return _prune_grouped(layer, idxs, outputs=False)
        return super().prune_in_channels(layer, idxs)


def _prune_grouped(layer: nn.Conv2d, idxs, outputs: bool) -> nn.Conv2d:
    drop = sorted({int(i) for i in idxs})
    pending = layer.__dict__.pop(_PENDING, None)
    if pending is not None:  # the second side of whole groups that went with the first
        side, gone = pending
        if side != outputs or drop != gone:
            raise ValueError(f"grouped conv: whole groups removed wait for {'output' if side else 'input'} channels "
                             f"{gone}, got {'output' if outputs else 'input'} channels {drop}")
        return layer
    whole = whole_groups(layer, drop, outputs)
    _check_equal(layer, drop, outputs, whole)
    in_width, out_width = _group_width(layer, False), _group_width(layer, True)
    kept_groups = [g for g in range(layer.groups) if g not in set(whole)]
    partial = set(drop) - set(channels_of(layer, whole, outputs))
    rows = [o for g in kept_groups for o in range(g * out_width, (g + 1) * out_width) if not (outputs and o in partial)]
    columns = [[c for c in range(in_width) if outputs or g * in_width + c not in partial] for g in kept_groups]
    device = layer.weight.device
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=device)
    columns_t = torch.as_tensor(columns, dtype=torch.long, device=device)

    def cut(t: torch.Tensor) -> torch.Tensor:
        t = t.index_select(0, rows_t) if len(rows) < t.shape[0] else t
        return t if columns_t.shape[1] == in_width else _gather_columns(t, columns_t)

    grad = layer.weight.grad
    layer.weight = nn.Parameter(cut(layer.weight.detach()).contiguous())
    if grad is not None:  # sliced the same way, as Torch-Pruning does for the others
        layer.weight.grad = cut(grad).contiguous()
    if layer.bias is not None and len(rows) < layer.out_channels:
        bias_grad = layer.bias.grad
        layer.bias = nn.Parameter(layer.bias.detach().index_select(0, rows_t))
        if bias_grad is not None:
            layer.bias.grad = bias_grad.index_select(0, rows_t)
    layer.out_channels, layer.in_channels = len(rows), sum(len(c) for c in columns)
    if whole:
        width = in_width if outputs else out_width  # the other side's, numbered as before
        layer.__dict__[_PENDING] = (not outputs, [g * width + c for g in whole for c in range(width)])
    layer.groups = len(kept_groups)
    return layer


def _gather_columns(w: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Each group's filters keep their own input columns `keep[g]`, written straight into the new
    weight (a slice and a concatenation per group would copy the largest weights twice)."""
    groups, k = keep.shape
    per_group = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1)  # (groups, filters, columns, taps)
    out = torch.empty((groups, per_group.shape[1], k, per_group.shape[3]), dtype=w.dtype, device=w.device)
    for g in range(groups):
        torch.index_select(per_group[g], 1, keep[g], out=out[g])
    return out.reshape(w.shape[0], k, *w.shape[2:])
