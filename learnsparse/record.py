"""The architecture record: what a trained (or deployed) network is, as plain data.

    {"model": {"_target_": ..., **arguments},          # any importable model
     "edits": [{"op": "sparsify", "method": "flgc", ...},  # what changed it, in order
               {"op": "convert", "structure": {...}}, ...],
     "structure": {layer name: {tensor name: tensor}}}  # learned structure of its trained layers

Every checkpoint and `condensed.pt` carries one (it loads with `weights_only=True`), and
`rebuild(record)` makes the module whose state dict they hold: resume, `init_from`,
`learnsparse-export`, `learnsparse.export.load` and the scripts all go through it. Code that
changes a model's architecture says so with `declare_edit`, and registers how to redo it with
`register_edit`; layer types say how their structure is saved (learnsparse.layer_types).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn

from .layer_types import layer_type

_EDITS_ATTR = "_learnsparse_edits"
_OPS: dict[str, Callable[[nn.Module, dict], nn.Module | None]] = {}


def register_edit(op: str):
    """`@register_edit("name")` on `fn(model, edit) -> model | None`: how `rebuild` redoes an
    edit (a returned module replaces the model, for edits such as a memory-format change)."""
    def wrap(fn):
        if op in _OPS:
            raise ValueError(f"edit {op!r} is already registered")
        _OPS[op] = fn
        return fn

    return wrap


def declare_edit(model: nn.Module, op: str, **arguments) -> None:
    """Record that `model` was changed by `op` (plain values and tensors only)."""
    edits = model.__dict__.setdefault(_EDITS_ATTR, [])
    edits.append({"op": op, **copy.deepcopy(arguments)})


def edits_of(model: nn.Module) -> list[dict]:
    return list(model.__dict__.get(_EDITS_ATTR, []))


def structure_of(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The learned structure of every trained layer that has one to save."""
    _load_builtins()
    out = {}
    for name, m in model.named_modules():
        entry = layer_type(m)
        if entry is not None and entry.save_structure is not None:
            out[name] = {k: v.detach().cpu().clone() for k, v in entry.save_structure(m).items()}
    return out


@torch.no_grad()
def restore_structure(model: nn.Module, structure: dict) -> None:
    _load_builtins()
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
    return {"model": config, "edits": edits_of(model), "structure": structure_of(model)}


def model_name(model_config: dict) -> str:
    """A registry model's name, else its `_target_`."""
    return str(model_config.get("name") or model_config.get("_target_"))


def rebuild(record: dict) -> nn.Module:
    """The module a record describes, with freshly initialised weights (load the state dict
    that came with the record next). Edits are redone in order, then the structure put back."""
    from hydra.utils import instantiate

    _load_builtins()
    model = instantiate(record["model"], _convert_="all")
    edits = record.get("edits", [])
    for i, edit in enumerate(edits):
        fn = _OPS.get(edit["op"])
        if fn is None:
            raise ValueError(f"the record has an edit {edit['op']!r} that nothing registered; known: {sorted(_OPS)}")
        replaced = fn(model, edit)
        if replaced is not None:
            model = replaced
        # What the op declared while redoing itself is the record's own entry.
        model.__dict__[_EDITS_ATTR] = copy.deepcopy(edits[: i + 1])
    restore_structure(model, record.get("structure", {}))
    return model


def _load_builtins() -> None:
    # learnsparse's own edits and layer types register where they are defined.
    from . import learned_grouping  # noqa: F401  (sparsify)
    from .export import deploy_edits  # noqa: F401  (convert, structure passes, classifier, layout; layer types)
    from .sparsity import condense_in_training, shrink_in_training  # noqa: F401  (in-training swaps)
