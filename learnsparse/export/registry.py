"""Converters: one per trained layer kind, each mapping it to its deployed form."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_CONVERTERS: dict[type, Callable[[nn.Module], nn.Module]] = {}


def register_converter(trained_type: type):
    def wrap(fn: Callable[[nn.Module], nn.Module]):
        if trained_type in _CONVERTERS:
            raise ValueError(f"a converter for {trained_type.__name__} is already registered")
        _CONVERTERS[trained_type] = fn
        return fn

    return wrap


def converter_for(module: nn.Module):
    return _CONVERTERS.get(type(module))


def convert_modules(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """Replace, in place and top-down, every module that has a converter. A converted module's
    children are not visited: the converter owns all of it. A converter returns None when the
    module has nothing it converts; its children are then visited. Returns (name, old, new) rows."""
    rows = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            full = f"{prefix}.{name}" if prefix else name
            fn = converter_for(child)
            new = fn(child) if fn is not None else None
            if new is not None:
                setattr(parent, name, new)
                rows.append((full, child, new))
            else:
                visit(child, full)

    visit(model, "")
    return rows
