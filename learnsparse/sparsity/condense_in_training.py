"""Condense in place: once a layer's learned structure is final, train its deployed form.

A masked layer keeps paying the dense cost after its structure stops changing (CondenseNet's
last stage, FLGC after its freeze). The swap replaces each such layer, inside the running
training, by its deployed form kept trainable (`LayerType.trainable_form`: gathers and grouped
or per-group convs, no BatchNorm folding, no padding that gradients could fill), and:

- verifies it like an export: eval outputs equal within 1e-5 of their scale, training-mode
  losses equal, on a probe batch (copies of the model: running statistics stay untouched);
- carries each kept parameter's optimizer state over, sliced exactly as the weights are — by
  running the same converter on a copy of the layer whose weights are the state tensors;
- puts the new parameters where the old ones were in the optimizer, in the model's parameter
  order, so a run rebuilt from a checkpoint has the same optimizer layout;
- rebuilds the DDP wrapper around the new module (every rank swaps at the same step: the
  structure that triggers it is broadcast from rank 0);
- declares the edit on the model's architecture record, so resume, `init_from` and export
  rebuild the swapped model before its weights load.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.layer_types import layer_type
from learnsparse.record import declare_edit, edits_of, register_edit, restore_structure, structure_of

from .sliced_state import holding, sliced_optimizer_state
from .trainable_forms import DEPLOYED, choose_forms, own_random_stream

log = logging.getLogger("learnsparse")
OP = "condense_in_training"


class SwapMismatchError(RuntimeError):
    pass


def swapped_by(model: nn.Module, method: str) -> list[str]:
    """Layers the in-training swap of `method` replaced (from the model's record)."""
    return [name for e in edits_of(model) if e["op"] == OP and e["method"] == method for name in e["layers"]]


def _trainable_form(layer: nn.Module) -> nn.Module:
    entry = layer_type(layer)
    if entry is None or entry.trainable_form is None:
        raise TypeError(f"{type(layer).__name__} has no trainable deployed form")
    return entry.trainable_form(layer)


def _sliced_state(layer: nn.Module, new_layer: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state for each parameter of `new_layer`, sliced from `layer`'s as its weights were."""
    def convert(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(_trainable_form(holding(layer, values)).named_parameters())

    sliced, scalars = sliced_optimizer_state(optimizer, dict(layer.named_parameters()), convert)
    return {p: {**sliced.get(name, {}), **copy.deepcopy(scalars)} for name, p in new_layer.named_parameters()}


def replace_in_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, removed: list[nn.Parameter],
                         added: dict[nn.Parameter, dict], group_of: dict[nn.Parameter, int]) -> None:
    """Drop `removed` and their state; add `added` with theirs, each into its group; every
    group then lists its parameters in the model's order (as a run rebuilt from the
    checkpoint would build it)."""
    gone = {id(p) for p in removed}
    for p in removed:
        optimizer.state.pop(p, None)
    members = [{id(p) for p in g["params"] if id(p) not in gone} for g in optimizer.param_groups]
    for p, g in group_of.items():
        members[g].add(id(p))
    for g, ids in zip(optimizer.param_groups, members):
        g["params"] = [p for p in model.parameters() if id(p) in ids]
    for p, state in added.items():
        if state:
            optimizer.state[p] = state


def _probe(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, train: bool, seed: int) -> torch.Tensor:
    probe = copy.deepcopy(model).train(train)
    with own_random_stream(x.device):
        torch.manual_seed(seed)
        with torch.no_grad():
            out = probe(x)
    return F.cross_entropy(out, targets) if train else out


def probe_input(trainer, batch: int = 4) -> torch.Tensor:
    gen = torch.Generator(device=trainer.device).manual_seed(0)
    x = torch.randn(batch, *trainer.input_shape, device=trainer.device, generator=gen)
    return x.to(memory_format=trainer.memory_format) if x.dim() == 4 else x


def training_batch(trainer) -> torch.Tensor:
    """An input of one training batch's shape (per rank), for timing layers as they train."""
    loader = getattr(trainer, "train_loader", None)
    return probe_input(trainer, getattr(loader, "batch_size", None) or 4)


def rewrap(trainer) -> None:
    """A DDP wrapper holds the old parameters' buckets: wrap the changed module anew."""
    if isinstance(trainer.model, nn.parallel.DistributedDataParallel):
        trainer.model = nn.parallel.DistributedDataParallel(trainer.unwrapped_model,
                                                            device_ids=trainer.model.device_ids)


def check_same_function(before: nn.Module, after: nn.Module, x: torch.Tensor, rtol: float = 1e-5) -> None:
    """Eval outputs within rtol of their scale, and training-mode losses equal (on copies)."""
    targets = torch.arange(x.shape[0], device=x.device) % 2
    y0, y1 = _probe(before, x, targets, False, 0), _probe(after, x, targets, False, 0)
    scale = float(y0.abs().max())
    diff = float((y0 - y1).abs().max())
    if not diff <= rtol * max(scale, 1e-12):
        raise SwapMismatchError(f"condense in training: eval outputs differ by {diff:.3g} (scale {scale:.3g})")
    l0, l1 = _probe(before, x, targets, True, 1), _probe(after, x, targets, True, 1)
    if not abs(float(l0) - float(l1)) <= rtol * max(abs(float(l0)), 1e-12):
        raise SwapMismatchError(f"condense in training: training losses differ ({float(l0):.6g} vs {float(l1):.6g})")


def swap_in_training(trainer, names: list[str], method: str, rtol: float = 1e-5, choose: str = DEPLOYED,
                     **facts) -> list[str]:
    """Replace the named layers of the trainer's model by their trainable deployed forms (those
    that have one; with `choose="measure"`, those whose deployed form also trains faster);
    returns the names swapped. `facts` go into the record's edit."""
    model = trainer.unwrapped_model
    modules = dict(model.named_modules())
    forms = {name: _trainable_form(modules[name]) for name in names}
    forms = {name: form.to(device=trainer.device, memory_format=trainer.memory_format)
             for name, form in forms.items() if form is not None}
    chosen = choose_forms(model, forms, lambda: training_batch(trainer), choose, getattr(trainer, "amp_dtype", None))
    names = [name for name in forms if chosen[name]["form"] == DEPLOYED]
    if choose != DEPLOYED:
        log.info("%s: %d of %d layers train faster deployed (forward + backward measured)", method,
                 len(names), len(forms))
        facts["forms"] = chosen  # recorded even if no layer swaps, so resume does not time again
    if not forms or (not names and choose == DEPLOYED):
        return []
    x = probe_input(trainer)
    before = copy.deepcopy(model)
    structure = {name: s for name, s in structure_of(model).items() if name in names}
    param_group = {id(p): i for i, g in enumerate(trainer.optimizer.param_groups) for p in g["params"]}
    removed, added, group_of = [], {}, {}
    with torch.no_grad():
        for name in names:
            layer = modules[name]
            new = forms[name]
            state = _sliced_state(layer, new, trainer.optimizer)
            group = next((param_group[id(p)] for p in layer.parameters() if id(p) in param_group), 0)
            for p in new.parameters():
                group_of[p] = group
            removed += list(layer.parameters())
            added.update(state)
            model.set_submodule(name, new)
    check_same_function(before, model, x, rtol)
    replace_in_optimizer(trainer.optimizer, model, removed, added, group_of)
    declare_edit(model, OP, method=method, layers=list(names), structure=structure,
                 channels_last=trainer.memory_format is torch.channels_last, **facts)
    rewrap(trainer)
    log.info("%s: %d layers now train in their deployed form (%s)", method, len(names),
             ", ".join(sorted({type(model.get_submodule(n)).__name__ for n in names})))
    return names


def swap_facts(model: nn.Module, method: str) -> dict:
    """What the swap of `method` recorded besides its layers (e.g. the stage reached)."""
    for e in edits_of(model):
        if e["op"] == OP and e["method"] == method:
            return {k: v for k, v in e.items()
                    if k not in ("op", "method", "layers", "structure", "channels_last", "forms")}
    return {}


@register_edit(OP)
@torch.no_grad()
def redo_swap(model: nn.Module, edit: dict) -> None:
    restore_structure(model, edit["structure"])
    for name in edit["layers"]:
        new = _trainable_form(model.get_submodule(name))
        if new is None:
            raise ValueError(f"the record swapped {name!r}, whose structure has no trainable deployed form")
        if edit.get("channels_last"):
            new = new.to(memory_format=torch.channels_last)
        model.set_submodule(name, new)
