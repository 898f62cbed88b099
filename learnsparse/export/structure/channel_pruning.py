"""Remove channels that are exactly dead, through Torch-Pruning's dependency graph.

The graph couples every layer that shares a channel: the conv that writes it, its BatchNorm,
residual adds (every branch writing the channel), concatenations, splits, flatten → linear,
and the layers that read it. Which channels of such a group may go is `channel_rules`; this
file drives it over a whole model, and never returns a model that computes something else:

1. for each conv or linear layer, only the channels that look dead there (a zero filter, a
   killed BatchNorm, an input its readers ignore) start a group search, bounded in steps
   (`dependency_graph`), so the search stays small on any topology;
2. a group that reaches a grouped conv loses whole conv groups (their other side goes right
   after it, as a group of its own: `_other_side`) and the same count from each other conv
   group; one that reaches a reshape Torch-Pruning cannot map (a channel shuffle), or whose
   indices it maps out of range (some splits), keeps its channels;
3. each group is pruned under a snapshot: if Torch-Pruning raises, its layers are put back.
   The pruned model's output is compared with the original's on the example and on noise;
   if it moved, the pass starts again from the snapshot and checks after every group that
   goes through anything but convs, norms and element-wise ops (`_unusual`), keeping the
   ones that move it; if the output still moved, nothing is removed.

Whatever looked dead and stays is listed, a layer a line, with the reason (`kept`).
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from .channel_rules import (
    _WEIGHTED,
    _is_bn_kernel,
    _is_depthwise,
    _preserves_zero,
    analyse,
    cached_zero_masks,
    fold_constants,
    indices_in_range,
    removable_channels,
    unread_inputs,
    zero_filters,
)
from .dependency_graph import MAX_SEARCH_STEPS, ReachesOpaque, SearchBound, build
from .grouped_conv import channels_of, equal_per_group, is_grouped, whole_groups
from .module_state import Snapshot, kept_state

__all__ = ["ChannelPruning", "prune_dead_channels", "remove_dead_channels", "removable_channels"]

# The pruned model may differ from the original by float rounding only (removed terms were
# zero): far below the export's own check (1e-5 of the output scale).
_RTOL = 3e-6


@dataclass
class ChannelPruning:
    changed: list = field(default_factory=list)  # (layer name, layer, output channels before, after)
    history: list = field(default_factory=list)  # Torch-Pruning's pruning history: replays the removal
    bias_added: list = field(default_factory=list)  # layers given a bias to absorb folded constants
    kept: list = field(default_factory=list)  # {"layer", "channels", "of", "reason"}: zeros left in place


def remove_dead_channels(model: nn.Module, example_inputs: torch.Tensor) -> tuple[list, list, list]:
    """Prune, in place, every removable channel of `model`. Returns (layer name, layer, output
    channels before, after) for each layer whose output channels changed, the pruning history
    that replays it, and the layers that got a bias to absorb folded constants. A layer always
    keeps one channel so that its shape stays valid; wholly dead residual branches are removed
    before this pass. `prune_dead_channels` also says which zeros stayed, and why."""
    result = prune_dead_channels(model, example_inputs)
    return result.changed, result.history, result.bias_added


def prune_dead_channels(model: nn.Module, example_inputs: torch.Tensor,
                        max_search_steps: int = MAX_SEARCH_STEPS) -> ChannelPruning:
    """`remove_dead_channels`, with the zeros that stayed (`ChannelPruning.kept`). Module modes,
    requires_grad flags and memory formats are as they were when it returns."""
    with kept_state(model), cached_zero_masks():
        try:
            DG = build(model, example_inputs, max_search_steps)
        except Exception as e:  # noqa: BLE001 - the model stays as it is, its zeros listed
            return ChannelPruning(kept=_all_dead_layers(model, f"the dependency graph failed: {_short(e)}"))
        probe = torch.cat([example_inputs, torch.randn(example_inputs.shape, generator=torch.Generator()
                                                       .manual_seed(2)).to(example_inputs)])
        with torch.no_grad():
            reference = model(probe)
        start = Snapshot(model, DG)
        result = _prune_groups(model, DG, example_inputs, probe, reference, check_each=False)
        if not _same_output(model, probe, reference):
            start.restore()
            result = _prune_groups(model, DG, example_inputs, probe, reference, check_each=True)
            if not _same_output(model, probe, reference):  # not one group to blame: remove nothing
                start.restore()
                result = ChannelPruning(kept=_all_dead_layers(model, "removing them changed the output, "
                                                                     "and no single group did: all kept"))
    return result


def _prune_groups(model, DG, example_inputs, probe, reference, check_each: bool) -> ChannelPruning:
    names = {m: n for n, m in model.named_modules()}
    before = {m: m.weight.shape[0] for m in model.modules() if isinstance(m, _WEIGHTED)}
    out = ChannelPruning()
    kept: dict[nn.Module, list] = {}  # layer → [channels, reason]
    # Per layer, the output channels some group already decided (in its current numbering): a
    # layer is a root only for the dead channels no earlier group reached.
    handled: dict[nn.Module, set[int]] = {}
    for root in [m for m in list(DG.module2node) if isinstance(m, _WEIGHTED)]:
        if names.get(root) is None:
            continue
        pruner = DG.get_pruner_of_module(root)
        n = pruner.get_out_channels(root)
        candidates = [c for c in _looks_dead(DG, root) if c not in handled.get(root, ())]
        if not candidates:
            continue
        try:
            group = DG.get_pruning_group(root, pruner.prune_out_channels, candidates, stop_at_opaque=True)
        except ReachesOpaque as e:
            _keep(kept, root, len(candidates), f"they pass through {e.why}: coupled, kept")
            continue
        except SearchBound as e:
            _keep(kept, root, len(candidates), f"{e}: kept")
            continue
        except Exception as e:  # noqa: BLE001
            _keep(kept, root, len(candidates), f"Torch-Pruning could not group them: {_short(e)}")
            continue
        for item in group.items:
            if DG.is_out_channel_pruning_fn(item.dep.handler) and isinstance(item.dep.target.module, _WEIGHTED):
                handled.setdefault(item.dep.target.module, set()).update(item.idxs)
        cand = torch.zeros(n, dtype=torch.bool)
        cand[candidates] = True
        if not indices_in_range(DG, group):
            _keep_group(kept, group, DG, cand, "Torch-Pruning maps their indices out of range (a split or slice)")
            continue
        opaque = [DG.opaque[item.dep.target] for item in group.items if item.dep.target in DG.opaque]
        if opaque:
            _keep_group(kept, group, DG, cand, f"they pass through {opaque[0]}: coupled, kept")
            continue
        a = analyse(DG, group, n)
        if a.is_output:
            continue
        removable, foldable = a.removable & cand, a.foldable & cand
        if any(is_grouped(item.dep.target.module) for item in group.items):
            foldable[:] = False  # a folded constant must not be cut back by the per-group rule after
        if bool((removable | foldable).all()):  # a layer keeps one channel, so its shape stays valid
            last = torch.nonzero(foldable if foldable.any() else removable).flatten()[0]
            foldable[last] = removable[last] = False
        remove, whole, grouped_why = _per_conv_group(group, DG, torch.nonzero(removable).flatten().tolist())
        snapshot = Snapshot(model, DG, _touched(model, group, DG) +
                            [m for _, _, _, other in whole for m in _touched(model, other, DG)])
        added = []
        if foldable.any():
            had_bias = {m for m in model.modules() if isinstance(m, _WEIGHTED) and m.bias is not None}
            folded = fold_constants(model, group, torch.nonzero(foldable).flatten().tolist(), example_inputs)
            remove = sorted(remove + folded)
            added = [m for m in model.modules() if isinstance(m, _WEIGHTED) and m.bias is not None and m not in had_bias]
        removed = torch.zeros(n, dtype=torch.bool)
        if remove:
            try:
                # Group.prune(idxs=…) would also record the full group in the history; this
                # records exactly what was removed, so the history replays on a fresh model.
                pruned = DG.get_pruning_group(root, pruner.prune_out_channels, remove)
                pruned.prune()
                # Whole conv groups: their other side, at once (grouped_conv.py), as its own
                # group in the history so that it replays in the same order.
                others = [DG.get_pruning_group(m, fn, idxs) for m, fn, idxs, _ in whole]
                for other in others:
                    other.prune()
                if check_each and _unusual(group, DG) and not _same_output(model, probe, reference):
                    raise _Moved()
            except Exception as e:  # noqa: BLE001 - undo this group, keep its zeros
                snapshot.restore()
                why = "removing them changed the output (a pattern not understood)" if isinstance(e, _Moved) \
                    else f"Torch-Pruning failed to remove them: {_short(e)}"
                _keep_group(kept, group, DG, cand, why)
                continue
            removed[remove] = True
            for done in (pruned, *others):
                _renumber(handled, done, DG)
        elif added:
            snapshot.restore()  # constants folded for channels that then stayed: undo the folds
            added = []
        out.bias_added += [names[m] for m in added]
        why = grouped_why or a.why
        for m, dead in a.writer_dead.items():
            left = int((dead & cand & ~removed).sum())
            if left and m in names:
                _keep(kept, m, left, why)
    out.changed = [(names[m], m, b, m.weight.shape[0]) for m, b in before.items() if m.weight.shape[0] != b]
    out.history = [list(h) for h in DG.pruning_history()]
    out.kept = [{"layer": names[m], "channels": c, "of": _width(m), "reason": r} for m, (c, r) in kept.items()
                if m in names]
    return out


def _renumber(handled: dict, pruned, DG) -> None:
    """Channels left after a prune move down by the number removed below them."""
    for item in pruned.items:
        m = item.dep.target.module
        if m in handled and DG.is_out_channel_pruning_fn(item.dep.handler):
            gone = sorted(set(item.idxs))
            removed = set(gone)
            handled[m] = {i - bisect_left(gone, i) for i in handled[m] if i not in removed}


def _touched(model: nn.Module, group, DG) -> list:
    """The modules that pruning (part of) `group`, or folding constants into its readers, can
    change: each item's layer or op, and the module holding each bare parameter (Torch-Pruning
    replaces it there). A group pruned with a subset of the indices reaches a subset of these."""
    out = []
    for item in group.items:
        m = item.dep.target.module
        if isinstance(m, nn.Parameter):
            owner = DG._param_to_name.get(m, "").rpartition(".")[0]
            out.append(model.get_submodule(owner))
        elif isinstance(m, nn.Module):
            out.append(m)
    return out


def _unusual(group, DG) -> bool:
    """A group through more than convs, linears, norms and element-wise ops: where Torch-Pruning's
    index mappings (splits, slices, concats, reshapes, expands, bare parameters) or our grouped
    rule could be wrong. Only these are checked one by one when the whole pass moved the output
    (checking every group would cost a forward pass each)."""
    for item in group.items:
        m = item.dep.target.module
        if isinstance(m, (tp.ops._SplitOp, tp.ops._SliceOp, tp.ops._UnbindOp, tp.ops._ExpandOp, tp.ops._ReshapeOp,
                          tp.ops._ConcatOp, tp.ops._CustomizedOp, nn.Parameter)) or is_grouped(m):
            return True
    return False


class _Moved(Exception):
    """The pruned model's output moved."""


def _per_conv_group(group, DG, remove: list[int]) -> tuple[list[int], list, str | None]:
    """Cut `remove` (root channels) down until every grouped conv of the group loses whole groups
    (where the other side of those groups can go too) and the same count from each other group.
    Returns the root channels, the other sides to prune right after the group — (conv, pruning
    function, channels, that side's group) each — and why channels stay, if some do."""
    grouped = [item for item in group.items if is_grouped(item.dep.target.module)]
    if not grouped or not remove:
        return remove, [], None
    sides: dict[nn.Module, set[bool]] = {}
    for item in grouped:
        sides.setdefault(item.dep.target.module, set()).add(DG.is_out_channel_pruning_fn(item.dep.handler))
    members = {item.dep.target.module for item in group.items}
    keep_set, why, looked = set(remove), None, {}
    while True:  # the set only shrinks: a fixed point comes quickly
        changed, plans = False, []
        for item in grouped:
            m = item.dep.target.module
            outputs = DG.is_out_channel_pruning_fn(item.dep.handler)
            hit = [(i, r) for i, r in zip(item.idxs, item.root_idxs) if r in keep_set]
            whole = whole_groups(m, [i for i, _ in hit], outputs) if len(sides[m]) == 1 else []
            if whole:
                key = (m, outputs, tuple(whole))
                if key not in looked:
                    looked[key] = _other_side(DG, m, outputs, whole, members)
                plan = looked[key]
                if plan is None:
                    whole = []
                else:
                    plans.append(plan)
            allowed = set(equal_per_group(m, [i for i, _ in hit], outputs, whole))
            dropped = {r for i, r in hit if i not in allowed}
            if dropped:
                keep_set -= dropped
                changed = True
                why = f"a grouped conv (groups={m.groups}) would lose unequal counts per group: the rest stay"
        if not changed:
            return sorted(keep_set), plans, why


def _other_side(DG, m: nn.Module, outputs: bool, whole: list[int], members: set):
    """The group that removes the other side of conv groups `whole` of `m` (its outputs, when
    the first side was its inputs, or the reverse), if every channel of it can go and pruning
    it after the first side is safe; None otherwise."""
    if m.out_channels // m.groups == 1:
        return None  # one filter a group: the conv left would look depthwise to Torch-Pruning
    pruner = DG.get_pruner_of_module(m)
    fn = pruner.prune_in_channels if outputs else pruner.prune_out_channels
    idxs = channels_of(m, whole, not outputs)
    try:
        other = DG.get_pruning_group(m, fn, idxs, stop_at_opaque=True)
    except Exception:  # noqa: BLE001 - a search over its bound, or a mapping that fails: not whole groups
        return None
    if not indices_in_range(DG, other) or any(item.dep.target in DG.opaque for item in other.items):
        return None
    a = analyse(DG, other, m.in_channels if outputs else m.out_channels)
    if a.is_output or not bool(a.removable[idxs].all()):
        return None
    for item in other.items:
        t, out = item.dep.target.module, DG.is_out_channel_pruning_fn(item.dep.handler)
        if t is m:
            if out == outputs:
                return None  # it reaches the first side again
        elif t in members:
            return None  # shared with the first group: its numbering would move under the second
        elif is_grouped(t) and equal_per_group(t, item.idxs, out) != sorted(set(item.idxs)):
            return None
    return m, fn, idxs, other


def _looks_dead(DG, root: nn.Module) -> list[int]:
    """Channels of `root`'s output that are zero there, or unread by the layers that read it
    directly (through its BatchNorm and zero-preserving ops): the only ones worth a search."""
    dead = zero_filters(root)
    node = DG.module2node[root]
    frontier, seen = list(node.outputs), set()
    while frontier:
        nxt = frontier.pop()
        if nxt in seen or len(seen) > 64:
            continue
        seen.add(nxt)
        m = nxt.module
        if isinstance(m, nn.BatchNorm2d) and m.num_features == dead.numel():
            dead |= m.weight.detach() == 0
            frontier += nxt.outputs
        elif isinstance(m, _WEIGHTED) and not _is_depthwise(m):
            in_width = m.weight.shape[1] * (m.groups if isinstance(m, nn.Conv2d) else 1)
            if in_width == dead.numel():
                dead |= unread_inputs(m)
        elif (_preserves_zero(m) and not isinstance(m, _STRUCTURAL)) or _is_depthwise(m) or _is_bn_kernel(m):
            frontier += nxt.outputs
    return torch.nonzero(dead).flatten().tolist()


_STRUCTURAL = (tp.ops._ConcatOp, tp.ops._SplitOp, tp.ops._ReshapeOp, tp.ops._SliceOp, tp.ops._UnbindOp)


def _keep(kept: dict, m: nn.Module, channels: int, reason: str) -> None:
    if m in kept:
        kept[m][0] = max(kept[m][0], channels)
    else:
        kept[m] = [channels, reason]


def _keep_group(kept: dict, group, DG, cand: torch.Tensor, reason: str) -> None:
    """Every weighted writer of the group with zeros among the candidates keeps them, for `reason`."""
    try:
        writers = analyse(DG, group, cand.numel()).writer_dead
    except (IndexError, RuntimeError):  # indices Torch-Pruning mapped out of range: name the root
        writers = {}
    for m, dead in writers.items():
        left = int((dead & cand).sum())
        if left:
            _keep(kept, m, left, reason)
    if not writers:
        _keep(kept, group[0].dep.target.module, int(cand.sum()), reason)


def _all_dead_layers(model: nn.Module, reason: str) -> list[dict]:
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, _WEIGHTED):
            dead = int(zero_filters(m).sum())
            if dead:
                rows.append({"layer": name, "channels": dead, "of": _width(m), "reason": reason})
    return rows


def _same_output(model: nn.Module, probe: torch.Tensor, reference) -> bool:
    try:
        with torch.no_grad():
            y = model(probe)
    except Exception:  # noqa: BLE001 - a model that no longer runs has certainly moved
        return False
    if not isinstance(y, torch.Tensor) or not isinstance(reference, torch.Tensor) or y.shape != reference.shape:
        return False
    scale = float(reference.abs().max())
    return float((y - reference).abs().max()) <= _RTOL * max(scale, 1e-12)


def _width(m: nn.Module) -> int:
    return m.weight.shape[0]


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:120]}" if text else type(e).__name__
