"""Widths for thinned layers: a layer that lost dead channels keeps its exact width, or is
padded with zero channels up to a multiple of 8 or 16, or back to its trained width (dense).

Removing dead channels leaves widths such as 20, 18, 37, 47 and 100, which no kernel is tuned
for: network slimming's export of one user's VGG did 2.00x fewer MACs and ran at 0.94x dense in
ONNX Runtime, and the same network rounded to multiples of 8 ran 1.5x faster than dense
(Torch-Pruning's `round_to=8` exists for this). Padding is exact: a padded channel is written
by a zero filter with zero bias (a BatchNorm on it has γ = β = 0), and every reader has zero
weights for it. As for learned layers' tactics, the choice is made by timing, opt-in
(`target` with `measure=True`): the candidate networks are timed whole in the target runtime
and the fastest is kept, so a thinned export is never slower than the dense one there. Without
measuring, widths stay exact (a default never depends on timing).

Only channels with one writer conv and plain readers are padded (a conv's output read through
BatchNorm, ReLU, pooling by convs or a linear layer): a residual stream or a concatenation is
shared by several layers and keeps its exact width.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch_pruning as tp

from learnsparse.core.record import declare_edit

EXACT, DENSE = "exact", "dense"
MULTIPLES = {"pad8": 8, "pad16": 16}
FORMS = (EXACT, *MULTIPLES, DENSE)


def _plain_conv(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.groups == 1


def paddable_groups(model: nn.Module, example: torch.Tensor) -> list[dict]:
    """Per channel group that can be padded: {"writer": conv name, "bn": [names], "readers":
    [names], "width": channels}. The model's modes are left as they were."""
    modes = {m: m.training for m in model.modules()}
    names = {m: n for n, m in model.named_modules()}
    try:
        with torch.enable_grad():
            DG = tp.DependencyGraph().build_dependency(model, example_inputs=example[:1], verbose=False)
        groups = []
        for group in DG.get_all_groups(root_module_types=[nn.Conv2d]):
            found = _paddable(DG, group, names)
            if found is not None:
                groups.append(found)
        return groups
    finally:
        for m, training in modes.items():
            m.training = training


def _paddable(DG, group, names) -> dict | None:
    width = len(group[0].idxs)
    writers, bns, readers = [], [], []
    for item in group.items:
        m, idxs = item.dep.target.module, list(item.idxs)
        out = DG.is_out_channel_pruning_fn(item.dep.handler)
        if isinstance(m, tp.ops._ElementWiseOp) or isinstance(m, (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d,
                                                                       nn.AdaptiveAvgPool2d, nn.Identity,
                                                                       nn.Dropout)):
            continue
        if len(idxs) != width or idxs != list(range(width)):
            return None  # part of a concatenation or a flatten over space: shared, or not channel-wise
        if isinstance(m, nn.BatchNorm2d):
            bns.append(names[m])
        elif _plain_conv(m) and out:
            writers.append(names[m])
        elif (_plain_conv(m) or isinstance(m, nn.Linear)) and not out:
            readers.append(names[m])
        else:
            return None  # an operation padding could not follow (a residual add, a lowered conv, the output)
    if len(writers) != 1 or not readers:
        return None
    return {"writer": writers[0], "bn": sorted(set(bns)), "readers": sorted(set(readers)), "width": width}


def padded_width(form: str, width: int, trained_width: int) -> int:
    if form == EXACT:
        return width
    if form == DENSE:
        return max(width, trained_width)
    return min(max(width, trained_width), math.ceil(width / MULTIPLES[form]) * MULTIPLES[form])


def plan(model: nn.Module, trained: nn.Module, example: torch.Tensor, form: str) -> dict[str, dict[str, int]]:
    """{module name: {"out" | "in" | "bn": zero channels to add}} for one width form: every
    thinned, paddable group grown to its padded width."""
    trained_modules = dict(trained.named_modules())
    edits: dict[str, dict[str, int]] = {}
    for g in paddable_groups(model, example):
        before = trained_modules.get(g["writer"])
        trained_width = getattr(before, "out_channels", g["width"])
        extra = padded_width(form, g["width"], trained_width) - g["width"]
        if extra <= 0:
            continue
        edits.setdefault(g["writer"], {})["out"] = extra
        for name in g["bn"]:
            edits.setdefault(name, {})["bn"] = extra
        for name in g["readers"]:
            edits.setdefault(name, {})["in"] = extra
    return edits


def _grown(t: torch.Tensor, dim: int, extra: int, fill: float = 0.0) -> nn.Parameter | torch.Tensor:
    shape = list(t.shape)
    shape[dim] = extra
    grown = torch.cat([t.detach(), t.new_full(shape, fill)], dim)
    return nn.Parameter(grown, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else grown


@torch.no_grad()
def pad_channels(model: nn.Module, edits: dict[str, dict[str, int]]) -> None:
    """Add the planned zero channels, in place (also how `load` redoes it: values come after)."""
    for name, grow in edits.items():
        m = model.get_submodule(name)
        if "out" in grow:
            m.weight = _grown(m.weight, 0, grow["out"])
            if m.bias is not None:
                m.bias = _grown(m.bias, 0, grow["out"])
            m.out_channels += grow["out"]
        if "in" in grow:
            m.weight = _grown(m.weight, 1, grow["in"])
            if isinstance(m, nn.Linear):
                m.in_features += grow["in"]
            else:
                m.in_channels += grow["in"]
        if "bn" in grow:
            k = grow["bn"]
            m.weight, m.bias = _grown(m.weight, 0, k), _grown(m.bias, 0, k)
            m.running_mean, m.running_var = _grown(m.running_mean, 0, k), _grown(m.running_var, 0, k, 1.0)
            m.num_features += k


def width_candidates(exported: nn.Module, trained: nn.Module, example: torch.Tensor,
                     channels_last: bool) -> dict[str, tuple[nn.Module, dict]]:
    """{form: (padded copy of the exact export, its plan)} for every form that changes a width."""
    candidates = {}
    for form in FORMS[1:]:
        edits = plan(exported, trained, example, form)
        if not edits or any(edits == e for _, e in candidates.values()):
            continue
        padded = copy.deepcopy(exported)
        pad_channels(padded, edits)
        if channels_last:
            padded = padded.to(memory_format=torch.channels_last)
        declare_edit(padded, "pad_channels", redo_pad_channels, layers=edits, form=form, channels_last=channels_last)
        candidates[form] = (padded.eval(), edits)
    return candidates


def choose_widths(trained: nn.Module, exact: nn.Module, example: torch.Tensor, target: str, batch: int | None,
                  threads: int | None, rtol: float, channels_last: bool) -> tuple[nn.Module, dict]:
    """The fastest of the exact export and its padded forms, timed whole in the target runtime;
    returns it and what was chosen ({"form", "ms", "layers": padded widths per writer})."""
    from .tactics import whole_model_ms
    from .verify import check_equivalent, verification_inputs

    candidates = width_candidates(exact, trained, example, channels_last)
    if not candidates:
        return exact, {}
    inputs = verification_inputs(example)
    for padded, _ in candidates.values():
        check_equivalent(trained, padded, inputs, rtol)  # exact by construction; proven anyway
    models = {EXACT: exact, **{form: m for form, (m, _) in candidates.items()}}
    ms = whole_model_ms(models, example, target, batch, threads)
    form = min(ms, key=ms.get)
    writers = sorted({name for _, plan_ in candidates.values() for name, grow in plan_.items() if "out" in grow})
    chosen = candidates[form][1] if form != EXACT else {}
    layers = {}  # writer: [exact width, deployed width]
    for name in writers:
        width = exact.get_submodule(name).out_channels
        layers[name] = [width, width + chosen.get(name, {}).get("out", 0)]
    return models[form], {"form": form, "ms": ms, "layers": layers}


def redo_pad_channels(model: nn.Module, edit: dict) -> nn.Module:
    """`rebuild`'s redo of the padded widths, on a model that has the exact export's layers."""
    pad_channels(model, edit["layers"])
    return model.to(memory_format=torch.channels_last) if edit.get("channels_last") else model
