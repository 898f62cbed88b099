"""The architecture record: what a trained (or deployed) network is, as plain data.

    {"model": {"_target_": ..., **arguments},          # any importable model
     "edits": [{"op": "sparsify", "redone_by": "learnsparse.sparsity.learned_grouping.redo_sparsify",
                "method": "flgc", ...},                      # what changed it, in order
               {"op": "convert", "redone_by": ..., "structure": {...}}, ...],
     "structure": {layer name: {tensor name: tensor}}}  # learned structure of its trained layers

Every checkpoint and `condensed.pt` carries one (it loads with `weights_only=True`), and
`rebuild(record)` makes the module whose state dict they hold: resume, `init_from`,
`learnsparse-export`, `learnsparse.export.load` and the scripts all go through it. Code that
changes a model's architecture says so with `declare_edit(model, op, redone_by=fn, ...)`: the
edit names the function that redoes it (`fn(model, edit) -> model | None`, any module-level
function, found by import like a config's `_target_`), so no registry must be filled before a
record rebuilds. Layer types say how their structure is saved (learnsparse.core.layer_types);
each class registers that where it is defined.
"""
from __future__ import annotations

import copy
import importlib
from typing import Callable

import torch
import torch.nn as nn

from .layer_types import layer_type

_EDITS_ATTR = "_learnsparse_edits"
Redo = Callable[[nn.Module, dict], "nn.Module | None"]

# learnsparse's own ops and the function that redoes each: for records written before edits
# named their function, and for a record whose function has since moved.
BUILTIN_OPS = {
    "sparsify": "learnsparse.sparsity.learned_grouping.redo_sparsify",
    "convert": "learnsparse.export.condense.redo_convert",
    "structure_passes": "learnsparse.export.condense.redo_structure_passes",
    "prune_classifier": "learnsparse.export.condense.redo_prune_classifier",
    "memory_format": "learnsparse.export.condense.redo_memory_format",
    "pad_channels": "learnsparse.export.thinned_widths.redo_pad_channels",
    "condense_in_training": "learnsparse.sparsity.condense_in_training.redo_swap",
    "shrink_in_training": "learnsparse.export.condense.redo_structure_passes",
}


def qualified_name(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def declare_edit(model: nn.Module, op: str, redone_by: Redo | str, **arguments) -> None:
    """Record that `model` was changed by `op` (plain values and tensors only); `redone_by` is
    the module-level function `rebuild` calls to redo it, `fn(model, edit) -> model | None` (a
    returned module replaces the model, for edits such as a memory-format change)."""
    name = redone_by if isinstance(redone_by, str) else qualified_name(redone_by)
    try:  # what rebuild will import must import now, or the record could not be rebuilt
        found = _import_function(name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"edit {op!r}: redone_by must name a module-level function ({e})") from e
    if not isinstance(redone_by, str) and found is not redone_by:
        raise ValueError(f"edit {op!r}: redone_by must be a module-level function, got {name}")
    edits = model.__dict__.setdefault(_EDITS_ATTR, [])
    edits.append({"op": op, "redone_by": name, **copy.deepcopy(arguments)})


def _import_function(name: str) -> Callable:
    module, _, attr = name.rpartition(".")
    if not module or module == "__main__":
        raise ValueError(f"{name} is not importable by name")
    return getattr(importlib.import_module(module), attr)


def _redo_function(edit: dict) -> Redo:
    names = [n for n in (edit.get("redone_by"), BUILTIN_OPS.get(edit["op"])) if n]
    if not names:
        raise ValueError(f"the record's edit {edit['op']!r} names no function that redoes it")
    for name in names:
        try:
            return _import_function(name)
        except (ImportError, AttributeError, ValueError) as e:
            error = e
    raise ValueError(f"the record's edit {edit['op']!r} is redone by {names[0]}, which cannot be imported ({error})")


def edits_of(model: nn.Module) -> list[dict]:
    return list(model.__dict__.get(_EDITS_ATTR, []))


def learned_structure(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The learned structure of every trained layer that has one to save."""
    out = {}
    for name, m in model.named_modules():
        entry = layer_type(m)
        if entry is not None and entry.save_structure is not None:
            out[name] = {k: v.detach().cpu().clone() for k, v in entry.save_structure(m).items()}
    return out


@torch.no_grad()
def restore_structure(model: nn.Module, structure: dict) -> None:
    modules = dict(model.named_modules())
    for name, saved in structure.items():
        if name not in modules:
            raise ValueError(f"the record's structure names layer {name!r}, which the rebuilt model does not have")
        entry = layer_type(modules[name])
        if entry is None or entry.restore_structure is None:
            raise ValueError(f"layer {name!r} ({type(modules[name]).__name__}) has no registered structure to restore")
        entry.restore_structure(modules[name], saved)


def architecture_record(model: nn.Module, model_config: dict) -> dict:
    """The record of `model`, built from `model_config` (a `_target_` node, resolved)."""
    config = {k: v for k, v in dict(model_config).items() if k != "_partial_"}
    if "_target_" not in config:
        raise ValueError("the model config needs a _target_")
    return {"model": config, "edits": edits_of(model), "structure": learned_structure(model)}


def model_name(model_config: dict) -> str:
    """A registry model's name, else its `_target_`."""
    return str(model_config.get("name") or model_config.get("_target_"))


def rebuild(record: dict) -> nn.Module:
    """The module a record describes, with freshly initialised weights (load the state dict
    that came with the record next). Edits are redone in order, then the structure put back."""
    from hydra.utils import instantiate

    model = instantiate(record["model"], _convert_="all")
    # An older record's edits gain the name of their function, as new ones carry it.
    edits = [{**e, "redone_by": e.get("redone_by") or BUILTIN_OPS.get(e["op"])} for e in record.get("edits", [])]
    for i, edit in enumerate(edits):
        replaced = _redo_function(edit)(model, edit)
        if replaced is not None:
            model = replaced
        # What the op declared while redoing itself is the record's own entry.
        model.__dict__[_EDITS_ATTR] = copy.deepcopy(edits[: i + 1])
    restore_structure(model, record.get("structure", {}))
    return model
