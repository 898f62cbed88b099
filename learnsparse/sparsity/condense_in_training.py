"""Condense in place: once a layer's learned structure is final, train its deployed form.

A masked layer keeps paying the dense cost after its structure stops changing (CondenseNet's
last stage, FLGC after its freeze). The swap replaces each such layer, inside the running
training, by its deployed form kept trainable (`LayerType.trainable_converter`: gathers and grouped
or per-group convs, no BatchNorm folding, no padding that gradients could fill). Which layers
swap was chosen before training started (trainable_forms.py). The change itself goes through
the trainer's one surgery path (`trainer.replace_modules`, learnsparse/engine/surgery.py):
verified like an export, optimizer state sliced by running the same converter on a copy of the
layer whose weights are the state tensors, parameters replaced in the optimizer in the model's
order, the edit declared on the architecture record (so resume, `init_from` and export rebuild
the swapped model before its weights load), DDP rewrapped, every hook told.
"""
from __future__ import annotations

import copy
import logging
from typing import Callable

import torch
import torch.nn as nn

from learnsparse.core.layer_types import layer_type
from learnsparse.core.record import edits_of, learned_structure, restore_structure

from .trainable_forms import DEPLOYED, check_choice, choose_forms, own_random_stream

log = logging.getLogger("learnsparse")
OP = "condense_in_training"


def swapped_by(model: nn.Module, method: str) -> list[str]:
    """Layers the in-training swap of `method` replaced (from the model's record)."""
    return [name for e in edits_of(model) if e["op"] == OP and e["method"] == method for name in e["layers"]]


def trainable_deployed(layer: nn.Module) -> nn.Module | None:
    """The layer's deployed form kept trainable (None where its structure has none)."""
    entry = layer_type(layer)
    if entry is None or entry.trainable_converter is None:
        raise TypeError(f"{type(layer).__name__} has no trainable deployed form")
    return entry.trainable_converter(layer)




def _redo(names: list[str]):
    """The swap, as a function of any model with these layers (a copy holding state tensors)."""
    def redo(model: nn.Module) -> None:
        for name in names:
            model.set_submodule(name, trainable_deployed(model.get_submodule(name)))
    return redo


def training_batch(trainer) -> torch.Tensor:
    """A fixed random input of one training batch's shape (per rank), for choosing forms."""
    loader = getattr(trainer, "train_loader", None)
    batch = getattr(loader, "batch_size", None) or 4
    gen = torch.Generator(device=trainer.device).manual_seed(0)
    x = torch.randn(batch, *trainer.input_shape, device=trainer.device, generator=gen)
    return x.to(memory_format=trainer.memory_format) if x.dim() == 4 else x


def choose_before_training(trainer, names: list[str], finalize: Callable[[nn.Module], None],
                           choose: str) -> dict[str, dict] | None:
    """The form each named layer will train in after its swap, chosen now, before the first
    step (and so before any checkpoint a run could resume from): on a copy of the model whose
    structure `finalize` makes final (e.g. the last condensing stage), since the swap happens
    later. None for `deployed` (every layer). See trainable_forms.py."""
    if check_choice(choose) == DEPLOYED or not names:
        return None
    model = copy.deepcopy(trainer.unwrapped_model)
    with own_random_stream(trainer.device), torch.no_grad():
        finalize(model)
        forms = {name: trainable_deployed(model.get_submodule(name)) for name in names}
    forms = {name: f.to(device=trainer.device, memory_format=trainer.memory_format)
             for name, f in forms.items() if f is not None}
    chosen = choose_forms(model, forms, lambda: training_batch(trainer), choose,
                          getattr(trainer, "amp_dtype", None))
    log.info("trainable_form=%s: %d of %d layers will train deployed after the swap", choose,
             sum(c["form"] == DEPLOYED for c in chosen.values()), len(names))
    return {name: chosen.get(name, {"form": DEPLOYED}) for name in names}


def swap_in_training(trainer, names: list[str], method: str, rtol: float = 1e-5,
                     forms: dict[str, dict] | None = None, **facts) -> list[str]:
    """Replace the named layers of the trainer's model by their trainable deployed forms (those
    that have one, and, when `forms` is given — {name: {"form": "deployed" | "masked", …}}, as
    chosen before training — those it names deployed); returns the names swapped. `facts` (and
    `forms`) go into the record's edit."""
    model = trainer.unwrapped_model
    built = {name: trainable_deployed(model.get_submodule(name)) for name in names}
    if forms is not None:
        facts["forms"] = {name: forms[name] for name in names if name in forms}
        built = {name: f for name, f in built.items() if forms.get(name, {}).get("form", DEPLOYED) == DEPLOYED}
    mapping = {name: form.to(device=trainer.device, memory_format=trainer.memory_format)
               for name, form in built.items() if form is not None}
    if forms is not None:
        log.info("%s: %d of %d layers train deployed (chosen before training)", method, len(mapping), len(names))
    if not mapping:
        return []
    swapped = list(mapping)
    structure = {name: s for name, s in learned_structure(model).items() if name in mapping}
    edit = {"op": OP, "redone_by": redo_swap, "method": method, "layers": swapped, "structure": structure,
            "channels_last": trainer.memory_format is torch.channels_last, **facts}
    trainer.replace_modules(mapping, edit=edit, redo=_redo(swapped), rtol=rtol)
    log.info("%s: %d layers now train in their deployed form (%s)", method, len(swapped),
             ", ".join(sorted({type(model.get_submodule(n)).__name__ for n in swapped})))
    return swapped


def swap_facts(model: nn.Module, method: str) -> dict:
    """What the swap of `method` recorded besides its layers (e.g. the stage reached)."""
    for e in edits_of(model):
        if e["op"] == OP and e["method"] == method:
            return {k: v for k, v in e.items()
                    if k not in ("op", "redone_by", "method", "layers", "structure", "channels_last", "forms")}
    return {}


@torch.no_grad()
def redo_swap(model: nn.Module, edit: dict) -> None:
    restore_structure(model, edit["structure"])
    for name in edit["layers"]:
        new = trainable_deployed(model.get_submodule(name))
        if new is None:
            raise ValueError(f"the record swapped {name!r}, whose structure has no trainable deployed form")
        if edit.get("channels_last"):
            new = new.to(memory_format=torch.channels_last)
        model.set_submodule(name, new)
