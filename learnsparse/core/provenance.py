"""Where a model's weights came from, carried on the model itself: a plugin that would
re-initialise weights (bn_slimming's gamma_init) leaves loaded ones alone, and distillation
knows whether the classifier was trained."""
from __future__ import annotations

import torch.nn as nn

_LOADED_ATTR = "_learnsparse_init_from"


def mark_loaded(model: nn.Module, path: str, new_head: bool) -> None:
    """`trainer.init_from` loaded `path` into `model` (`new_head`: its classifier was not loaded)."""
    model.__dict__[_LOADED_ATTR] = {"path": path, "new_head": new_head}


def loaded_from(model: nn.Module) -> str | None:
    """The file `trainer.init_from` loaded into this model, or None: a plugin that would
    re-initialise weights (bn_slimming's gamma_init) leaves loaded ones alone."""
    return (model.__dict__.get(_LOADED_ATTR) or {}).get("path")


def has_new_head(model: nn.Module) -> bool:
    """True when init_from left this model's classifier untrained (another number of classes)."""
    return bool((model.__dict__.get(_LOADED_ATTR) or {}).get("new_head"))
