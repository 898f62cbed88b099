"""`budget`: the cost the exported network must meet, as a fraction of the network a run starts from.

    budget.macs=0.5        half the MACs per image
    budget.params=0.3      30% of the parameters
    budget.latency=0.5     half the latency in budget.target (onnxruntime | eager | compile) at
                           budget.batch images: timing-based, so opt-in; what it measured is recorded
    budget.steps=K         prune in K increments across training (iterative pruning)
    budget.round_to=N      every thinned width a multiple of N (the budget counts the rounded widths)

Threshold-and-freeze meets it with a global ranking of channels (sparsity/budget_cost.py: what
each channel costs through the export's dependency graph), checked on the export; LGC and
FLGC meet it with the condense factor or group count they pick (sparsity/budget_groups.py).
No target set (the default) keeps the plugins' own rules.
"""
from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from learnsparse.core.distributed import broadcast_object

from .budget_cost import BudgetUnreachable, apply_dead, cost_model, dead_entries, exported_cost, select
from .layer_pairs import batchnorm_after

log = logging.getLogger("learnsparse")
KINDS = ("macs", "params", "latency")
# The runtimes a latency budget is timed in: the registered targets whose forms build in
# seconds (pt2 and aoti compile a whole program for every candidate).
LATENCY_TARGETS = ("onnxruntime", "eager", "compile")
# Where the cut lands: at most the target, and no lower than this fraction of it wherever the
# remaining steps are small enough (one channel of a wide layer, not a whole stage).
LOWER = 0.97


@dataclass(frozen=True)
class Budget:
    kind: str                 # macs | params | latency
    fraction: float           # of the network the run starts from
    target: str = "onnxruntime"
    batch: int = 1
    steps: int = 1
    round_to: int | None = None

    @classmethod
    def from_config(cls, node: Mapping | None) -> "Budget | None":
        """The budget a config names, or None when it names no target. Bad values raise
        ValueError with one line naming the key."""
        if node is None:
            return None
        node = dict(node)
        # input_shape: added by the run for plugins that choose before training (lgc, flgc)
        unknown = sorted(set(node) - {*KINDS, "target", "batch", "steps", "round_to", "input_shape"})
        if unknown:
            raise ValueError(f"budget: unknown key {unknown[0]!r}; it takes {', '.join(KINDS)}, target, batch, "
                             f"steps and round_to")
        named = [k for k in KINDS if node.get(k) is not None]
        if len(named) > 1:
            raise ValueError(f"budget: set one of budget.macs, budget.params or budget.latency "
                             f"(got {', '.join(named)})")
        if not named:
            return None
        kind = named[0]
        fraction = node[kind]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ValueError(f"budget.{kind} must be a fraction of the dense network in (0, 1), got {fraction!r}")
        target = node.get("target") or "onnxruntime"
        if target not in LATENCY_TARGETS:
            raise ValueError(f"budget.target must be one of {', '.join(LATENCY_TARGETS)}, got {target!r}")
        batch, steps, round_to = node.get("batch") or 1, node.get("steps") or 1, node.get("round_to")
        for key, value in (("batch", batch), ("steps", steps), ("round_to", round_to)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"budget.{key} must be a whole number ≥ 1, got {value!r}")
        return cls(kind, float(fraction), target, int(batch), int(steps), round_to)

    def fraction_at(self, step: int) -> float:
        """The target after increment `step` of `steps` (1-based): equal steps from the whole
        network down to `fraction`, as Torch-Pruning's iterative steps."""
        return 1.0 - (1.0 - self.fraction) * step / self.steps

    def describe(self) -> str:
        extra = f" in {self.target} at batch {self.batch}" if self.kind == "latency" else ""
        return f"budget.{self.kind}={self.fraction:g}{extra}"


@dataclass
class BudgetState:
    """What a budgeted run has decided so far: in the checkpoint, so resume replays it."""
    dense: float | None = None        # the cost of the network the run started from
    done: int = 0                     # increments made
    achieved: float | None = None     # the export's cost / dense, measured after the last increment
    # latency budgets: the MACs fraction each increment chose by timing, and the latency
    # fraction it measured (replayed on resume, never re-timed)
    chosen_macs: dict[int, float] = field(default_factory=dict)
    latency: dict[int, float] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"dense": self.dense, "done": self.done, "achieved": self.achieved,
                "chosen_macs": dict(self.chosen_macs), "latency": dict(self.latency)}

    @classmethod
    def from_state(cls, state: dict | None) -> "BudgetState":
        state = state or {}
        return cls(state.get("dense"), int(state.get("done", 0)), state.get("achieved"),
                   {int(k): float(v) for k, v in (state.get("chosen_macs") or {}).items()},
                   {int(k): float(v) for k, v in (state.get("latency") or {}).items()})


def working_copy(model: nn.Module) -> nn.Module:
    """A CPU, NCHW, eval-mode copy: the budget's ranking and trial exports never touch the
    trained model's mode, layout or device."""
    return copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()


def network_cost(model: nn.Module, example: torch.Tensor, what: str) -> float:
    from learnsparse.core.counting import count_flops, count_params

    work = working_copy(model)
    return float(count_flops(work, example) // 2) if what == "macs" else float(count_params(work))


def choose_dead(model: nn.Module, example: torch.Tensor, chosen: set[str], kinds: list[str], what: str,
                target: float, round_to: int | None) -> tuple[list, float]:
    """The groups to zero so that the export of `model` costs at most `target` (MACs or
    params), and that cost as measured on the export. The entries name `model`'s modules."""
    work = working_copy(model)
    excluded: set[int] = set()
    for _ in range(4):
        cm = cost_model(work, example, chosen, kinds, what)
        cm.groups = [g for g in cm.groups if cm.units[g[0]].group not in excluded]
        try:
            units = select(cm, target, LOWER * target, round_to)
        except BudgetUnreachable:
            # Coarse steps (round_to, narrow layers) left nothing that fits between the bounds:
            # meet the budget, landing lower.
            cm = cost_model(work, example, chosen, kinds, what)
            cm.groups = [g for g in cm.groups if cm.units[g[0]].group not in excluded]
            units = select(cm, target, 0.0, round_to)
        dead = dead_entries(work, cm, units)
        trial = copy.deepcopy(work)
        apply_dead(trial, dead)
        measured = exported_cost(trial, example, what)
        if measured <= target * (1 + 1e-9):
            modules = dict(model.named_modules())
            return [(name, modules[name], kind, t.to(modules[name].weight.device)) for name, _, kind, t in dead], \
                measured
        # Some chosen channels did not leave the export (an op between layers the export cannot
        # see through): their groups are not candidates, and the choice is made again.
        check = cost_model(trial, example, chosen, kinds, what)
        failed = {cm.units[u].group for u in units if u not in check.dead}
        if not failed:
            break
        excluded |= failed
    raise BudgetUnreachable(f"the export keeps {measured:,.0f} where the budget allows {target:,.0f}")


def latency_ratio(before: nn.Module, after: nn.Module, budget: Budget, example: torch.Tensor,
                  device: torch.device | None = None) -> float:
    """after's latency / before's, both exported, timed side by side in the budget's runtime on
    `device` (the training device: a GPU run times on its GPU)."""
    from learnsparse.core.runtimes import interleaved_ms, runner, target_runtime
    from learnsparse.export.structure.passes import remove_dead_structure

    runtime = target_runtime(budget.target).name
    device = device or torch.device("cpu")
    x = example[:1].expand(budget.batch, *example.shape[1:]).contiguous().to(device)
    models = {}
    for key, m in (("before", before), ("after", after)):
        m = working_copy(m)
        remove_dead_structure(m, example[:1].cpu())  # the export's passes, on CPU as the export runs them
        models[key] = m.to(device)
    with tempfile.TemporaryDirectory() as work, torch.no_grad():
        threads = torch.get_num_threads()
        ms = interleaved_ms({k: runner(m, runtime, x, threads, Path(work)) for k, m in models.items()}, rounds=21)
    return ms["after"] / ms["before"]


def choose_for_latency(model: nn.Module, example: torch.Tensor, chosen: set[str], kinds: list[str],
                       budget: Budget, want: float, round_to: int | None) -> tuple[float, float]:
    """The largest MACs fraction (of `model`) whose export runs within `want` × its latency:
    a bisection over MACs targets, each export timed against `model`'s. Returns (that
    fraction, the latency ratio measured there)."""
    dense = network_cost(model, example, "macs")
    device = next(model.parameters()).device
    lo, hi, best = 0.02, 1.0, None
    for _ in range(6):
        mid = (lo + hi) / 2
        try:
            dead, _ = choose_dead(model, example, chosen, kinds, "macs", mid * dense, round_to)
        except BudgetUnreachable:
            lo = mid
            continue
        trial = working_copy(model)
        apply_dead(trial, [(n, None, k, t) for n, _, k, t in dead])
        ratio = latency_ratio(working_copy(model), trial, budget, example, device=device)
        if ratio <= want:
            best, lo = (mid, ratio), mid
        else:
            hi = mid
    if best is None:
        raise BudgetUnreachable(f"no pruning found runs within {want:g} × the latency in {budget.target}")
    return best


# ---- threshold-and-freeze with a budget (its calls into this file) --------------------------

def budget_settings(budget: Mapping | None, round_to: int | None) -> tuple[Budget | None, int | None]:
    """The plugin's budget and the width multiple its cut keeps (its own `round_to`, else the budget's)."""
    parsed = Budget.from_config(budget)
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a whole number ≥ 1, got {round_to!r}")
    return parsed, round_to or (parsed.round_to if parsed else None)


def _example(plugin) -> torch.Tensor:
    return torch.zeros(1, *plugin.trainer.input_shape)


def _measured(budget: Budget) -> str:
    return "macs" if budget.kind == "latency" else budget.kind


def start_budget(plugin) -> None:
    """The cost of the network the run starts from, once (resume keeps the first run's)."""
    state = plugin.budget_state
    if state.dense is None:
        state.dense = network_cost(plugin.model, _example(plugin), _measured(plugin.budget))
        log.info("%s: the network starts at %s %s; the export must reach %s", plugin.budget.describe(),
                 f"{state.dense:,.0f}", _measured(plugin.budget), f"{plugin.budget.fraction * state.dense:,.0f}"
                 if plugin.budget.kind != "latency" else f"{plugin.budget.fraction:g} × its latency")


def increment_due(plugin) -> bool:
    """Increment k of K falls at progress at × k / K (the last one at `at`)."""
    state, budget = plugin.budget_state, plugin.budget
    return state.done < budget.steps and plugin.progress >= plugin.at * (state.done + 1) / budget.steps


def budget_dead_groups(plugin) -> list:
    """The groups this increment zeroes: a global ranking of channels whose cut meets this
    increment's target on the export (sparsity/budget_cost.py)."""
    budget, state = plugin.budget, plugin.budget_state
    step = state.done + 1
    example = _example(plugin)
    chosen = {name for name, _ in plugin.chosen}
    kinds = list(plugin.kinds)
    try:
        if budget.kind == "latency":
            if step not in state.chosen_macs:  # timed once; a resumed run replays the record
                before = state.latency.get(step - 1, 1.0)
                current = network_cost(plugin.model, example, "macs")
                fraction, ratio = choose_for_latency(plugin.model, example, chosen, kinds, budget,
                                                     budget.fraction_at(step) / before, plugin.round_to)
                # Each rank timed its own; all take rank 0's, so they freeze the same masks.
                fraction, ratio = broadcast_object((fraction, ratio))
                state.chosen_macs[step] = fraction * current / state.dense
                state.latency[step] = before * ratio
            target = state.chosen_macs[step] * state.dense
        else:
            target = budget.fraction_at(step) * state.dense
        dead, measured = choose_dead(plugin.model, example, chosen, kinds, _measured(budget), target,
                                     plugin.round_to)
    except BudgetUnreachable as e:
        raise BudgetUnreachable(f"{budget.describe()} cannot be met by pruning the threshold's layers: {e}") from None
    state.done = step
    state.achieved = measured / state.dense
    log.info("%s: increment %d of %d cuts the export to %.4f of the network's %s (target %.4f)", budget.describe(),
             step, budget.steps, state.achieved, _measured(budget), target / state.dense)
    return dead


def budget_metrics(plugin) -> dict[str, float]:
    """Target and achieved (measured on the export at the last increment; 1 before the first)."""
    budget, state = plugin.budget, plugin.budget_state
    out = {f"budget_{budget.kind}_target": budget.fraction}
    if budget.kind == "latency":
        out["budget_latency_achieved"] = state.latency.get(state.done, 1.0)
        out["budget_macs_achieved"] = state.achieved if state.achieved is not None else 1.0
    else:
        out[f"budget_{budget.kind}_achieved"] = state.achieved if state.achieved is not None else 1.0
    return out


def budget_record(plugin) -> dict:
    """The plugin's budget in its checkpoint state: the settings, what it decided and measured
    (the export's report reads `kind`, `fraction` and `dense`)."""
    b = plugin.budget
    return {"kind": b.kind, "fraction": b.fraction, "target": b.target, "batch": b.batch, "steps": b.steps,
            "round_to": plugin.round_to, **plugin.budget_state.state_dict()}


def rounded_dead_groups(plugin, dead: list) -> list:
    """The rule's dead groups with every thinned width rounded up to a multiple of `round_to`:
    in each coupled group, the highest-ranked channels the rule cut are kept until the kept
    count is a multiple (a group no wider than `round_to` keeps all)."""
    n = plugin.round_to
    example = _example(plugin)
    work = working_copy(plugin.model)
    trial = copy.deepcopy(work)
    apply_dead(trial, [(name, None, kind, t.cpu()) for name, _, kind, t in dead], batchnorm_after(work))
    chosen = {name for name, _ in plugin.chosen}
    kinds = list(plugin.kinds)
    cut = cost_model(trial, example, chosen, kinds, "macs")   # which channels the export would remove
    ranked = cost_model(work, example, chosen, kinds, "macs")  # their scores before the cut
    revive = []
    for group in cut.groups:
        gone = [u for u in group if u in cut.dead]
        width, kept = len(group), len(group) - len(gone)
        want = width if width <= n else min(width, -(-max(kept, 1) // n) * n)
        gone.sort(key=lambda u: ranked.units[u].score, reverse=True)
        revive += gone[:max(want - kept, 0)]
    if not revive:
        return dead
    rows: dict[str, set[int]] = {}  # a revived channel comes back on both sides: its writers' rows
    cols: dict[str, set[int]] = {}  # and its readers' columns
    for u in revive:
        for name, idxs in cut.units[u].out_rows.items():
            rows.setdefault(name, set()).update(idxs)
        for name, idxs in cut.units[u].in_cols.items():
            cols.setdefault(name, set()).update(idxs)
    out = []
    for name, m, kind, t in dead:
        back = rows.get(name) if kind in ("filter", "element") else cols.get(name) if kind == "channel" else None
        if back and (kind != "element" or isinstance(m, nn.BatchNorm2d)):
            t = t.clone()
            t.view(-1)[sorted(back)] = False
        out.append((name, m, kind, t))
    log.info("threshold: round_to=%d keeps %d channels the rule would cut", n, len(revive))
    return out
