"""One registration per layer type: everything the rest of learnsparse asks of it.

A trained layer type (its structure is learned) declares how it converts to its deployed
form and how its learned structure is saved and restored; a deployed layer type declares what
the structure passes must know about it. Adding a layer type is one file with the class, its
converter and one `register_layer_type(...)` call (for a built-in type, one more line in the
layer index, `learnsparse/layers/__init__.py`) — nothing else changes:

    register_layer_type(MyTrainedConv, converter=to_deployed,
                        save_structure=lambda m: {"mask": m.mask},
                        restore_structure=lambda m, s: m.mask.copy_(s["mask"]))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn


@dataclass(frozen=True)
class LayerType:
    cls: type
    # Trained layers: module → deployed module (or None: nothing to convert, visit children).
    converter: Callable[[nn.Module], nn.Module | None] | None = None
    # Trained layers: the same function as a plain nn.Conv2d with the zeros baked into its
    # weights — the dense form, which runs anywhere and costs the dense MACs.
    dense_form: Callable[[nn.Module], nn.Module] | None = None
    # Trained layers: the deployed form kept trainable (no BatchNorm folding, no padding a
    # gradient could fill), for condensing in place during training; None when this layer's
    # structure has no such form (it then keeps training masked).
    trainable_converter: Callable[[nn.Module], nn.Module | None] | None = None
    # Trained layers: the schedule that learns this type's structure ("condensing": input
    # groups dropped in stages, CondenseNet; "grouping": inputs and filters assigned to groups,
    # FLGC). Schedules, sparsify and the budget find their layers by it.
    learns: str | None = None  # CONDENSING | GROUPING | None
    # Trained layers: make the learned structure final where training has brought it (the last
    # condensing stage, the current assignment frozen); given a generator, at a random end
    # state instead, as if trained (benchmarks and tests: learnsparse.layers.end_state).
    finish: Callable[[nn.Module, torch.Generator | None], None] | None = None
    # Trained layers: the learned structure as plain tensors, and putting it back on a fresh layer.
    save_structure: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None
    restore_structure: Callable[[nn.Module, dict[str, torch.Tensor]], None] | None = None
    # Deployed layers that read or write channels by index (gathers, padded groups): the
    # channel dependency graph cannot see through them, so channel pruning leaves them alone.
    index_addressed: bool = False
    # One operation to the torch.fx passes (their insides are never rewritten).
    trace_leaf: bool = False
    # Deployed convs a following BatchNorm can fold into: the convs whose outputs, in order,
    # make the layer's computed channels, and where each output channel sits among them
    # (None when in order). A layer with these is treated like an nn.Conv2d by the passes.
    computed_convs: Callable[[nn.Module], list[nn.Conv2d]] | None = None
    output_position: Callable[[nn.Module], torch.Tensor | None] | None = None


# The schedules that learn a trained type's structure (LayerType.learns).
CONDENSING, GROUPING = "condensing", "grouping"

_TYPES: dict[type, LayerType] = {}


def register_layer_type(cls: type, **facts) -> LayerType:
    """Declare a layer type (see LayerType for the facts). Registering a type twice is an error."""
    if cls in _TYPES:
        raise ValueError(f"layer type {cls.__name__} is already registered")
    entry = LayerType(cls, **facts)
    _TYPES[cls] = entry
    return entry


def layer_type(module_or_cls) -> LayerType | None:
    """The registration of a module's type, or of its nearest registered base class."""
    cls = module_or_cls if isinstance(module_or_cls, type) else type(module_or_cls)
    for base in cls.__mro__:
        if base in _TYPES:
            return _TYPES[base]
    return None


def has_fact(module: nn.Module, fact: str) -> bool:
    entry = layer_type(module)
    return entry is not None and bool(getattr(entry, fact))


def registered_types() -> list[LayerType]:
    return list(_TYPES.values())


def learned_by(module: nn.Module) -> str | None:
    """The schedule that learns this module's structure (LayerType.learns), or None."""
    entry = layer_type(module)
    return entry.learns if entry is not None else None


def outermost_layers(model: nn.Module, wanted: Callable[[LayerType], bool]) -> list[tuple[str, nn.Module, LayerType]]:
    """(name, module, registration) of the outermost modules below `model` whose registration is
    `wanted`, top-down. Their children are not visited: a layer type owns all of its insides."""
    found = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            full = f"{prefix}.{name}" if prefix else name
            entry = layer_type(child)
            if entry is not None and wanted(entry):
                found.append((full, child, entry))
            else:
                visit(child, full)

    visit(model, "")
    return found


@torch.no_grad()
def dense_equivalent(model: nn.Module) -> nn.Module:
    """A copy of `model` with every trained layer in its dense form (a plain conv whose weights
    hold the learned zeros): what a user has without learnsparse's export, the baseline every
    deployment speed is quoted against, and the dense tactic of a layer."""
    import copy

    dense = copy.deepcopy(model).eval()
    for name, child, entry in outermost_layers(dense, lambda e: e.dense_form is not None):
        dense.set_submodule(name, entry.dense_form(child))
    return dense
