"""Converting trained layers: each registered trained layer type maps to its deployed form."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from learnsparse.layer_types import layer_type, register_layer_type


def register_converter(trained_type: type):
    """`@register_converter(MyLayer)`: a layer type whose only fact is its converter. A layer
    with learned structure to save registers with `learnsparse.layer_types.register_layer_type`."""
    def wrap(fn: Callable[[nn.Module], nn.Module | None]):
        register_layer_type(trained_type, converter=fn)
        return fn

    return wrap


def converter_for(module: nn.Module):
    entry = layer_type(module)
    return entry.converter if entry is not None else None


def convert_modules(model: nn.Module, forms: dict[str, str] | None = None) -> list[tuple[str, nn.Module, nn.Module]]:
    """Replace, in place and top-down, every module that has a converter. A converted module's
    children are not visited: the converter owns all of it. A converter returns None when the
    module has nothing it converts; its children are then visited. `forms` names the layers
    to deploy in their dense form instead (the tactic choice). Returns (name, old, new) rows."""
    rows = []
    forms = forms or {}

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            full = f"{prefix}.{name}" if prefix else name
            entry = layer_type(child)
            if forms.get(full) == "dense" and entry is not None and entry.dense_form is not None:
                fn = entry.dense_form
            else:
                fn = converter_for(child)
            new = fn(child) if fn is not None else None
            if new is not None:
                setattr(parent, name, new)
                rows.append((full, child, new))
            else:
                visit(child, full)

    visit(model, "")
    return rows
