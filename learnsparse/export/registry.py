"""Converting trained layers: each registered trained layer type maps to its deployed form."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from learnsparse.core.layer_types import outermost_layers, register_layer_type


def register_converter(trained_type: type):
    """`@register_converter(MyLayer)`: a layer type whose only fact is its converter. A layer
    with learned structure to save registers with `learnsparse.core.layer_types.register_layer_type`."""
    def wrap(fn: Callable[[nn.Module], nn.Module | None]):
        register_layer_type(trained_type, converter=fn)
        return fn

    return wrap


def convert_modules(model: nn.Module, forms: dict[str, str] | None = None) -> list[tuple[str, nn.Module, nn.Module]]:
    """Replace, in place and top-down, every module that has a converter. A converted module's
    children are not visited: the converter owns all of it. A converter returns None when the
    module has nothing it converts; its children are then visited. `forms` names the layers
    to deploy in their dense form instead (the tactic choice). Returns (name, old, new) rows."""
    forms = forms or {}

    def convert_below(root: nn.Module, prefix: str) -> list[tuple[str, nn.Module, nn.Module]]:
        rows = []
        for name, child, entry in outermost_layers(root, lambda e: e.converter is not None):
            full = f"{prefix}.{name}" if prefix else name
            dense = forms.get(full) == "dense" and entry.dense_form is not None
            new = (entry.dense_form if dense else entry.converter)(child)
            if new is None:
                rows += convert_below(child, full)
            else:
                root.set_submodule(name, new)
                rows.append((full, child, new))
        return rows

    return convert_below(model, "")
