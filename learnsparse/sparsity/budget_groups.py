"""A budget for learned grouping: the condense factor (lgc) or group count (flgc) it picks.

A learned group conv's deployed cost follows from its setting alone: CondenseNet's layer keeps
`in - (C-1)·(in // C)` inputs per group (a fraction ≈ 1/C of its MACs and weights), FLGC's
grouped conv about 1/G. So the smallest setting whose predicted export meets the budget is
chosen (the most MACs the budget allows), then checked on a real export of a trial copy —
each learned layer condensed to its last stage (lgc) or frozen (flgc) — and the next setting
tried if that export misses. FLGC's learned groups may end uneven (unless `balanced`): the
trial freezes the initial assignment, so its figure is the balanced one.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

from learnsparse.core.counting import count_params, flops_by_module
from learnsparse.core.layer_types import CONDENSING, GROUPING, layer_type, learned_by
from learnsparse.sparsity.learned_grouping import sparsify

from .budget import Budget

log = logging.getLogger("learnsparse")
_MAX_SETTING = 64


def _cost(model: nn.Module, example: torch.Tensor, what: str) -> float:
    return float(flops_by_module(model, example)[""] // 2) if what == "macs" else float(count_params(model))


def _predicted(model: nn.Module, per_layer: dict[str, int], total: float, what: str, method: str, setting: int,
               groups: int, include, exclude) -> tuple[float, list[str]]:
    """The cost the export would have with this setting, from each replaced conv's dense cost
    (`per_layer`: MACs by module; `total`: the network's)."""
    trial = copy.deepcopy(model)
    kwargs = {"groups": setting, "condense_factor": 1} if method == "flgc" else \
        {"groups": groups, "condense_factor": setting}
    try:
        replaced = sparsify(trial, method, include=include, exclude=exclude, **kwargs)["replaced"]
    except ValueError:
        return float("inf"), []
    for name in replaced:
        conv = model.get_submodule(name)
        dense = per_layer.get(name, 0) if what == "macs" else conv.weight.numel()
        if method == "lgc":
            kept = conv.in_channels - (setting - 1) * (conv.in_channels // setting)
            total -= dense * (1 - kept / conv.in_channels)
        else:
            total -= dense * (1 - 1 / setting)
    return total, replaced


def _exported(model: nn.Module, example: torch.Tensor, what: str, method: str, setting: int, groups: int,
              include, exclude, balanced: bool) -> float:
    """The cost of a real export of a trial copy with this setting, its structure final."""
    from learnsparse.export import condense_with_details

    trial = copy.deepcopy(model).eval()
    if method == "flgc":
        sparsify(trial, "flgc", groups=setting, include=include, exclude=exclude, balanced=balanced)
    else:
        sparsify(trial, "lgc", groups=groups, condense_factor=setting, include=include, exclude=exclude)
    kind = GROUPING if method == "flgc" else CONDENSING
    for m in trial.modules():
        if learned_by(m) == kind:
            layer_type(m).finish(m, None)  # its structure final, as at the end of training
    exported = condense_with_details(trial, torch.randn(2, *example.shape[1:]), measure=False).model
    return _cost(exported, example, what)


def setting_for_budget(model: nn.Module, budget: Budget, input_shape: list[int], method: str, groups: int,
                       include=None, exclude=None, balanced: bool = False) -> tuple[int, float]:
    """(the condense factor for lgc / group count for flgc, the export's cost fraction there).
    Raises ValueError, one line, when no setting reaches the budget."""
    name = "condense_factor" if method == "lgc" else "groups"
    if budget.kind == "latency":
        raise ValueError(f"budget.latency: {method} picks its {name} from budget.macs or budget.params")
    what = budget.kind
    work = copy.deepcopy(model).cpu().eval()
    example = torch.zeros(1, *input_shape)
    dense = _cost(work, example, what)
    target = budget.fraction * dense
    per_layer = {k: v // 2 for k, v in flops_by_module(work, example).items()} if what == "macs" else {}
    best = None
    for setting in range(2, _MAX_SETTING + 1):
        predicted, replaced = _predicted(work, per_layer, dense, what, method, setting, groups, include, exclude)
        best = predicted if best is None else min(best, predicted)
        if predicted > target * (1 + 1e-9):
            continue
        measured = _exported(work, example, what, method, setting, groups, include, exclude, balanced)
        if measured <= target * (1 + 1e-9):
            log.info("%s: %s=%d (%d layers grouped) gives an export at %.4f of the network's %s", budget.describe(),
                     name, setting, len(replaced), measured / dense, what)
            return setting, measured / dense
    raise ValueError(f"{budget.describe()} cannot be met by {method}: the best {name} up to {_MAX_SETTING} leaves "
                     f"{(best or dense) / dense:.3f} of the {what} (the layers it cannot group stay dense)")


def budget_setting(model: nn.Module, budget: dict | None, method: str, groups: int, include=None, exclude=None,
                   balanced: bool = False) -> tuple[int | None, dict | None]:
    """The plugins' call: (the setting a budget picks, the record of it: sparsity/budget_record.py),
    or (None, None) without one (the configured setting stays)."""
    parsed = Budget.from_config(budget)
    if parsed is None:
        return None, None
    shape = (budget or {}).get("input_shape")
    if not shape:
        raise ValueError(f"{parsed.describe()}: {method} needs the input shape to count the cost (budget.input_shape)")
    work = copy.deepcopy(model).cpu().eval()
    dense = _cost(work, torch.zeros(1, *shape), parsed.kind if parsed.kind != "latency" else "macs")
    setting, achieved = setting_for_budget(model, parsed, list(shape), method, groups, include, exclude, balanced)
    return setting, {"kind": parsed.kind, "fraction": parsed.fraction, "dense": dense, "achieved": achieved,
                     "setting": {"condense_factor" if method == "lgc" else "groups": setting}}
