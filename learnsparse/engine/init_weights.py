"""`trainer.init_from`: start a new run from weights someone already trained.

It takes a learnsparse checkpoint (its architecture record rebuilds the edits that run made),
a plain state dict (`torch.save(model.state_dict(), path)`), a torchvision weights file
(which is one), or a dict holding one under `state_dict` / `model_state_dict` / `model`.
Keys saved from a DDP-wrapped model (`module.` prefix) are taken as they are meant.

What does not fit is said by name: keys the model has and the file lacks, keys the file has
and the model lacks, and the first tensor whose shape differs. Two differences are expected
and handled: a classifier with another number of classes (the model keeps its new head,
randomly initialised) and an RGB first conv loaded into a model with other input channels
(its filters are folded onto them, as `model.weights=` does for torchvision's models).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from learnsparse.core.errors import UserError, first_line
from learnsparse.core.provenance import mark_loaded
from learnsparse.models.torchvision_models import first_conv, fold_rgb, output_layer

log = logging.getLogger("learnsparse")

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_SHOWN = 8  # names listed in a message before "and N more"


def load_init(path: str | os.PathLike, what: str | None = None) -> dict:
    """The file `trainer.init_from` names, as {"model": state dict, "record": record or None}."""
    path = Path(path).expanduser()
    what = what or f"trainer.init_from={path}"
    if not path.is_file():
        raise UserError(f"{what}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise UserError(f"{what} holds pickled Python objects (a whole model?), which are not loaded for "
                            f"safety; save the weights instead: torch.save(model.state_dict(), path)") from e
        raise UserError(f"{what} is unreadable or truncated ({first_line(e)})") from e
    record = obj.get("record") if isinstance(obj, dict) else None
    state = obj
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict) and not _is_state_dict(state):
            state = state[key]
            break
    if not _is_state_dict(state):
        keys = ", ".join(map(str, list(obj)[:_SHOWN])) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{what} is neither a learnsparse checkpoint nor a state dict (it holds {keys})")
    return {"model": _strip_ddp_prefix(state), "record": record}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_ddp_prefix(state: dict) -> dict:
    if all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def init_weights(model: nn.Module, init: dict, path: str | os.PathLike, what: str | None = None) -> None:
    """Load `init["model"]` into `model`, or one line saying what does not fit."""
    what = what or f"trainer.init_from={path}"
    given = init["model"]
    own = model.state_dict()
    # Older files lack BatchNorm's step counter, which a fine-tune does not need.
    missing = [k for k in own if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in own]
    if missing or unexpected:
        parts = ([f"the model's {_names(missing)} are not in the file"] if missing else []) + \
                ([f"the file's {_names(unexpected)} are not in the model"] if unexpected else [])
        raise UserError(f"{what} does not fit this model: {'; '.join(parts)}")
    state = dict(given)
    notes = []
    differ = [k for k in given if given[k].shape != own[k].shape]
    head = _head_keys(model)
    head_differs = [k for k in differ if k in head]
    new_head = False
    # Another number of classes: only the outputs (dim 0) of the classifier differ.
    if head_differs and all(given[k].shape[1:] == own[k].shape[1:] for k in head_differs):
        for k in head:
            state[k] = own[k]  # the new head keeps the model's own initialisation
        notes.append(f"new head {head[0].rpartition('.')[0]} with {own[head[0]].shape[0]} outputs "
                     f"(the file's has {given[head[0]].shape[0]}), randomly initialised")
        differ = [k for k in differ if k not in head]
        new_head = True
    conv = first_conv(model)
    key = f"{conv[0]}.weight" if conv else None
    if key in differ and given[key].shape[1] == 3 and given[key].shape[0] == own[key].shape[0] \
            and given[key].shape[2:] == own[key].shape[2:] and conv[1].groups == 1:
        state[key] = fold_rgb(given[key], own[key].shape[1])
        notes.append(f"{conv[0]}'s RGB filters folded onto {own[key].shape[1]} input channel(s)")
        differ.remove(key)
    if differ:
        k = differ[0]
        more = f" (and {len(differ) - 1} more tensors differ)" if len(differ) > 1 else ""
        raise UserError(f"{what} does not fit this model: {k} is {list(given[k].shape)} in the file and "
                        f"{list(own[k].shape)} in the model{more}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"{what} does not fit this model ({first_line(e)})") from e
    mark_loaded(model, str(path), new_head)
    log.info("%s: loaded%s", what, "".join(f"; {n}" for n in notes))


def _head_keys(model: nn.Module) -> list[str]:
    found = output_layer(model)
    if found is None or not isinstance(found[1], (nn.Linear, nn.Conv2d)):
        return []
    prefix = f"{found[0]}."
    return [k for k in model.state_dict() if k.startswith(prefix) and "." not in k[len(prefix):]]


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")
