"""Model registry: `@register_model` on a builder, `create_model(name, ...)` to build it."""
from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

from learnsparse.core.errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name. Builders take num_classes and in_channels."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see learnsparse.models.list_models()"
        raise UserError(f"unknown model {name!r}{hint}")
    if num_classes < 1 or in_channels < 1:
        raise UserError(f"model {name}: num_classes and in_channels must be ≥ 1 (got {num_classes}, {in_channels})")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
