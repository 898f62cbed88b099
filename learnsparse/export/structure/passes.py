"""The structure passes in order, and their replay when `condensed.pt` is loaded.

1. residual branches that output zero become their shortcut (before channel pruning, so the
   dependency graph never sees a block whose every channel is dead);
2. dead channels go, through the dependency graph (recorded as Torch-Pruning's history);
3. convolutions with few kept kernel fibres are lowered.

`edits` records what was done in plain values, so `replay` can rebuild the same shapes on a
freshly built model without unpickling code.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from learnsparse.nn.lowered_conv import LoweredConv2d

from .channel_pruning import remove_dead_channels
from .dead_branches import dead_branch_names, residual_branch_modules, shortcut_only
from .lowering import lowered_fibres



def _has_dead_structure(model: nn.Module) -> bool:
    """Cheap check so models without structured zeros skip the dependency graph."""
    for m in model.modules():
        if type(m) in (nn.Conv2d, nn.Linear):
            w = m.weight.detach()
            if (w.flatten(1) == 0).all(dim=1).any() or (w.transpose(0, 1).flatten(1) == 0).all(dim=1).any():
                return True
        elif isinstance(m, nn.BatchNorm2d) and m.affine and ((m.weight == 0) & (m.bias == 0)).any():
            return True
    return False


def remove_structure(model: nn.Module, example_inputs: torch.Tensor) -> tuple[list[tuple[str, str, str]], dict]:
    """Apply the passes in place. Returns report rows (layer, before, after) and the edits."""
    rows: list[tuple[str, str, str]] = []
    edits: dict = {"shortcut_only": [], "pruning_history": [], "lowered": {}}
    blocks = dict(residual_branch_modules(model))
    for name in dead_branch_names(model):
        model.set_submodule(name, shortcut_only(blocks[name]))
        rows.append((name, type(blocks[name]).__name__, "ShortcutOnly"))
        edits["shortcut_only"].append(name)
    if _has_dead_structure(model):
        pruned, history = remove_dead_channels(model, example_inputs)
        rows += [(n, f"{type(m).__name__} ×{b}", f"{type(m).__name__} ×{a}") for n, m, b, a in pruned]
        edits["pruning_history"] = history
    for name, lowered in lowered_fibres(model).items():
        conv = model.get_submodule(name)
        model.set_submodule(name, lowered)
        rows.append((name, f"Conv2d {conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]} fibres",
                     f"LoweredConv2d {lowered.weight.shape[1]} fibres"))
        edits["lowered"][name] = torch.stack([lowered.fibre_channel, lowered.fibre_row, lowered.fibre_col], 1)
    return rows, edits


def replay(model: nn.Module, edits: dict, example_inputs: torch.Tensor) -> None:
    """Give a freshly built model the shapes `remove_structure` produced (weights come after)."""
    for name in edits.get("shortcut_only", []):
        model.set_submodule(name, shortcut_only(model.get_submodule(name)))
    if edits.get("pruning_history"):
        with torch.enable_grad():
            DG = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        DG.load_pruning_history(edits["pruning_history"])
    for name, fibres in edits.get("lowered", {}).items():
        conv = model.get_submodule(name)
        weight = torch.zeros(conv.out_channels, len(fibres))
        bias = torch.zeros(conv.out_channels) if conv.bias is not None else None
        model.set_submodule(name, LoweredConv2d(weight, fibres, bias, conv.kernel_size, conv.stride, conv.padding))
