"""What each prunable channel costs, counted through the dependency graph the export uses.

The export removes a dead channel from every layer that shares it (Torch-Pruning's
`DependencyGraph`: the conv that writes it, its BatchNorm, every branch of a residual add, a
concatenation, flatten → linear, and the layers that read it). So the unit a budget ranks
is one channel of one such coupled group, and its cost is what the export would take away
with it: its writers' filters and the inputs of its readers. A layer's MACs (or parameters)
are bilinear in its kept widths, `cost × kept_out/out × kept_in/in` (a depthwise conv scales
with its one width), so the network's cost after any removal is exact, given the per-layer
dense cost the project's counter (torch.utils.flop_counter) measures.

The choice is checked on the export itself (`exported_cost`): the masks are applied to a
copy and the export's structure passes run on it, then the same counter measures.
"""
from __future__ import annotations

import copy
import heapq
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from learnsparse.core.counting import count_params, flops_by_module
from learnsparse.export.structure.channel_pruning import removable_channels

_WEIGHTED = (nn.Conv2d, nn.Linear)
_COSTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def _depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


@dataclass
class Unit:
    """One channel of one coupled group: what zeroing it kills, and how small it is."""
    group: int
    root: int
    score: float
    out_rows: dict[str, list[int]] = field(default_factory=dict)  # writer layer → its output indices
    in_cols: dict[str, list[int]] = field(default_factory=dict)   # reader layer → its input indices
    route: str = "writers"  # which side gets zeroed: the writers (filters, γ/β) or the readers' inputs


@dataclass
class Layer:
    out: int
    inp: int
    bilinear: float   # cost ∝ kept_out × kept_in (conv/linear weights, MACs)
    linear: float     # cost ∝ kept_out only (bias, BatchNorm, a depthwise conv)

    def cost(self, kept_out: int, kept_in: int) -> float:
        return self.bilinear * (kept_out / self.out) * (kept_in / self.inp) + self.linear * (kept_out / self.out)


@dataclass
class CostModel:
    """The network's cost as a function of which units are gone."""
    layers: dict[str, Layer]
    fixed: float                      # cost no channel removal changes
    units: list[Unit]
    groups: list[list[int]]           # unit indices of each prunable group, in root order
    dead: set[int]                    # units the export already removes
    kept_out: dict[str, int] = field(default_factory=dict)
    kept_in: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.kept_out = {n: layer.out for n, layer in self.layers.items()}
        self.kept_in = {n: layer.inp for n, layer in self.layers.items()}
        for u in self.dead:
            self._remove(self.units[u], sign=1)

    def total(self) -> float:
        return self.fixed + sum(layer.cost(self.kept_out[n], self.kept_in[n]) for n, layer in self.layers.items())

    def _remove(self, unit: Unit, sign: int) -> None:
        # The export takes the channel from both sides (its writers' rows, its readers' columns),
        # whichever side the mask zeroes.
        for name, rows in unit.out_rows.items():
            if name in self.layers:
                self.kept_out[name] -= sign * len(rows)
        for name, cols in unit.in_cols.items():
            if name in self.layers:
                self.kept_in[name] -= sign * len(cols)

    def delta(self, units: list[int]) -> float:
        """How much the cost falls if `units` go."""
        touched = {n for u in units for n in (*self.units[u].out_rows, *self.units[u].in_cols) if n in self.layers}
        before = sum(self.layers[n].cost(self.kept_out[n], self.kept_in[n]) for n in touched)
        for u in units:
            self._remove(self.units[u], 1)
        after = sum(self.layers[n].cost(self.kept_out[n], self.kept_in[n]) for n in touched)
        for u in units:
            self._remove(self.units[u], -1)
        return before - after

    def remove(self, units: list[int]) -> None:
        for u in units:
            self._remove(self.units[u], 1)
        self.dead.update(units)

    def restore(self, units: list[int]) -> None:
        for u in units:
            self._remove(self.units[u], -1)
        self.dead.difference_update(units)


def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """The graph the export builds (channel_pruning.remove_dead_channels), on this model."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def _row_sq(m: nn.Module, idxs: list[int]) -> torch.Tensor:
    """Squared norm of each output (a filter; a BatchNorm's γ)."""
    w = m.weight.detach()[idxs]
    return w.pow(2).flatten(1).sum(1) if w.dim() > 1 else w.pow(2)


def _col_sq(m: nn.Module, idxs: list[int]) -> torch.Tensor:
    return m.weight.detach().transpose(0, 1)[idxs].pow(2).flatten(1).sum(1)


def cost_model(model: nn.Module, example: torch.Tensor, chosen: set[str], kinds: list[str],
               what: str = "macs") -> CostModel:
    """Units of every coupled group the export can remove and the plugin may prune.

    `chosen` names the layers the plugin prunes (its include/exclude); a group is a candidate
    when at least one of its writers is chosen and every writer of that family (conv/linear,
    or BatchNorm for slimming) is. `kinds`: `filter` (or BatchNorm `element`) ranks a channel
    by its writers, `channel` by its readers' inputs; with both, the smaller decides. The
    score is the root mean square over the coupled layers, so a channel shared by seven
    residual branches is not kept for being shared."""
    model = model.eval()
    DG = dependency_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    family_bn = any(isinstance(model.get_submodule(n), nn.BatchNorm2d) for n in chosen)
    units: list[Unit] = []
    groups: list[list[int]] = []
    dead: set[int] = set()
    for gi, group in enumerate(DG.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear])):
        n = len(group[0].idxs)
        writers_sq = torch.zeros(n)
        readers_sq = torch.zeros(n)
        n_writers = n_readers = 0
        out_rows: dict[str, list[tuple[int, int]]] = {}
        in_cols: dict[str, list[tuple[int, int]]] = {}
        ok, readers_ok, writers_chosen, has_reader = True, True, False, False
        for item in group.items:
            dep, m, idxs = item.dep, item.dep.target.module, list(item.idxs)
            roots = list(item.root_idxs)
            if isinstance(m, tp.ops._OutputOp):
                ok = False
                break
            name = names.get(m)
            grouped = isinstance(m, nn.Conv2d) and m.groups > 1 and not _depthwise(m)
            if grouped:  # its channels are tied group by group: not ranked one by one
                ok = False
                break
            if DG.is_out_channel_pruning_fn(dep.handler):
                if not isinstance(m, _COSTED) or name is None:
                    continue  # an op between layers (ReLU, add, pooling): it has no weights to zero
                out_rows.setdefault(name, []).extend(zip(roots, idxs))
                is_bn = isinstance(m, nn.BatchNorm2d)
                if is_bn == family_bn:
                    if name not in chosen:
                        ok = False
                        break
                    writers_chosen = True
                    sq = _row_sq(m, idxs)
                    writers_sq.scatter_add_(0, torch.as_tensor(roots), sq)
                    n_writers += 1
            elif isinstance(m, _WEIGHTED) and name is not None:
                has_reader = True
                in_cols.setdefault(name, []).extend(zip(roots, idxs))
                if _depthwise(m) or name not in chosen:
                    readers_ok = False
                else:
                    readers_sq.scatter_add_(0, torch.as_tensor(roots), _col_sq(m, idxs))
                    n_readers += 1
            else:
                has_reader = True
                readers_ok = False
        if not ok or not writers_chosen or not has_reader or n < 2:
            continue
        by_writers = (writers_sq / max(n_writers, 1)).sqrt() if ("filter" in kinds or family_bn) else None
        by_readers = (readers_sq / max(n_readers, 1)).sqrt() if ("channel" in kinds and readers_ok
                                                                and not family_bn and n_readers) else None
        if by_writers is None and by_readers is None:
            continue
        removable, _ = removable_channels(DG, group)
        start = len(units)
        for r in range(n):
            w = float(by_writers[r]) if by_writers is not None else math.inf
            c = float(by_readers[r]) if by_readers is not None else math.inf
            units.append(Unit(gi, r, min(w, c),
                              {k: sorted({i for root, i in v if root == r}) for k, v in out_rows.items()},
                              {k: sorted({i for root, i in v if root == r}) for k, v in in_cols.items()},
                              "readers" if c < w else "writers"))
        for r in removable:
            dead.add(start + r)
        groups.append(list(range(start, len(units))))
    flops = flops_by_module(model, example) if what == "macs" else None
    layers = _layer_costs(model, flops, what)
    total = flops[""] // 2 if what == "macs" else count_params(model)
    fixed = float(total) - sum(layer.bilinear + layer.linear for layer in layers.values())
    return CostModel(layers, fixed, units, groups, dead)


def _layer_costs(model: nn.Module, flops: dict[str, int] | None, what: str) -> dict[str, Layer]:
    """Each layer's dense cost: its MACs as the counter measured them (`flops`), or its parameters."""
    macs = {k: v // 2 for k, v in flops.items()} if what == "macs" else {}
    layers = {}
    for name, m in model.named_modules():
        if not isinstance(m, _COSTED) or not name:
            continue
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            layers[name] = Layer(c, 1, 0.0, 0.0 if what == "macs" else float(count_params(m)))
            continue
        out, inp = m.weight.shape[0], (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features)
        bias = m.bias.numel() if m.bias is not None else 0
        if what == "macs":
            cost, lin = float(macs.get(name, 0)), 0.0
        else:
            cost, lin = float(m.weight.numel()), float(bias)
        if _depthwise(m):
            layers[name] = Layer(out, inp, 0.0, cost + lin)
        else:
            layers[name] = Layer(out, inp, cost, lin)
    return layers


def chunks(model: CostModel, group: list[int], round_to: int | None) -> list[list[int]]:
    """The removals a group allows, lowest-ranked first: one unit at a time, or with
    `round_to` N the steps that leave a multiple of N kept. A group keeps at least one channel
    (N with rounding), as the export does; one no wider than N is left alone."""
    alive = sorted((u for u in group if u not in model.dead), key=lambda u: (model.units[u].score, u))
    step = round_to or 1
    out, kept = [], len(alive)
    first = kept % step or step
    i = 0
    size = first
    while kept - size >= step:
        out.append(alive[i:i + size])
        i, kept, size = i + size, kept - size, step
    return out


class BudgetUnreachable(ValueError):
    pass


def select(model: CostModel, target: float, lower: float, round_to: int | None = None) -> list[int]:
    """Units to remove, in global order of score, until the cost is at most `target`. A step
    that would fall below `lower` is skipped (with its group's later steps): the cut lands in
    [lower, target] wherever small enough steps remain. Raises BudgetUnreachable if removing
    every candidate still costs more than `target`."""
    heap = []
    queues = {}
    for gi, group in enumerate(model.groups):
        queues[gi] = chunks(model, group, round_to)
        if queues[gi]:
            first = queues[gi].pop(0)
            heapq.heappush(heap, (max(model.units[u].score for u in first), gi, first))
    total = model.total()
    taken: dict[int, list[list[int]]] = {}  # each group's removed steps, in order
    order: list[int] = []                   # the groups in the order their steps were taken
    while total > target and heap:
        _, gi, chunk = heapq.heappop(heap)
        drop = model.delta(chunk)
        if total - drop < lower and drop > 0:
            continue  # too big a step for what is left: later, smaller ones may fit
        model.remove(chunk)
        taken.setdefault(gi, []).append(chunk)
        order.append(gi)
        total -= drop
        if queues[gi]:
            nxt = queues[gi].pop(0)
            heapq.heappush(heap, (max(model.units[u].score for u in nxt), gi, nxt))
    if total > target:
        raise BudgetUnreachable(f"removing every channel the plugin may prune still leaves {total:,.0f}")
    # Landed low (coarse steps): give back the best-ranked steps taken last while the budget holds.
    for gi in reversed(order):
        if total >= lower:
            break
        if not taken[gi]:
            continue
        chunk = taken[gi][-1]
        model.restore(chunk)
        back = model.delta(chunk)
        if total + back <= target:
            taken[gi].pop()
            total += back
        else:
            model.remove(chunk)
    return [u for steps in taken.values() for chunk in steps for u in chunk]


def dead_entries(model: nn.Module, cost: CostModel, units: list[int]) -> list[tuple[str, nn.Module, str, torch.Tensor]]:
    """The chosen units as threshold-and-freeze's dead groups (layer, module, kind, where):
    writers lose the filter (and bias) or γ/β, readers lose the input channel."""
    where: dict[tuple[str, str], torch.Tensor] = {}
    modules = dict(model.named_modules())

    def mark(name: str, kind: str, idxs: list[int]) -> None:
        m = modules[name]
        if kind == "channel":
            shape = [1, m.weight.shape[1]] + [1] * (m.weight.dim() - 2)
        elif isinstance(m, nn.BatchNorm2d):
            kind, shape = "element", [m.num_features]
        else:
            shape = [m.weight.shape[0]] + [1] * (m.weight.dim() - 1)
        t = where.setdefault((name, kind), torch.zeros(shape, dtype=torch.bool, device=m.weight.device))
        t.view(-1)[idxs] = True

    for u in units:
        unit = cost.units[u]
        if unit.route == "readers":
            for name, cols in unit.in_cols.items():
                if cols:
                    mark(name, "channel", cols)
        else:
            for name, rows in unit.out_rows.items():
                if rows:
                    mark(name, "filter", rows)
    return [(name, modules[name], kind, t) for (name, kind), t in where.items()]


def apply_dead(model: nn.Module, dead: list[tuple[str, nn.Module, str, torch.Tensor]],
               bn_of: dict[str, str] | None = None) -> None:
    """Zero `dead` on `model` in place, as the freeze does (a dead filter's bias and
    BatchNorm go with it)."""
    modules = dict(model.named_modules())
    bn_of = bn_of or {}
    with torch.no_grad():
        for name, _, kind, is_dead in dead:
            m = modules[name]
            keep = ~is_dead.to(m.weight.device)
            m.weight.mul_(keep.expand_as(m.weight))
            channels = None
            if isinstance(m, nn.BatchNorm2d):
                channels = keep.flatten()
            elif kind in ("filter", "layer"):
                rows = keep.flatten() if kind == "filter" else keep.reshape(-1)[:1].expand(m.weight.shape[0])
                if m.bias is not None:
                    m.bias.mul_(rows)
                if name in bn_of:
                    channels = rows
                    m = modules[bn_of[name]]
            if channels is not None:
                m.weight.mul_(channels)
                m.bias.mul_(channels)


def exported_cost(model: nn.Module, example: torch.Tensor, what: str = "macs") -> float:
    """The cost of what the export makes of `model` (its structure passes on a copy)."""
    from learnsparse.export.structure.passes import remove_dead_structure

    thin = copy.deepcopy(model).eval()
    remove_dead_structure(thin, example)
    return float(flops_by_module(thin, example)[""] // 2) if what == "macs" else float(count_params(thin))
