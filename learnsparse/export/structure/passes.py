"""The structure passes in order, and their replay when `condensed.pt` is loaded.

1. residual branches that output zero become their shortcut (before channel pruning, so the
   dependency graph never sees a block whose every channel is dead);
2. dead channels go, through the dependency graph (recorded as Torch-Pruning's history);
   zeros that must stay are listed per layer with the reason (`edits["kept_zeros"]`, and a
   row each in the export's table). Transformers skip it with a one-line note;
3. convolutions with few kept kernel fibres are lowered;
4. output permutations of exported group convs move into the layers that read them;
5. BatchNorms that read a conv's output, and nothing else, fold into that conv.

`edits` records what was done in plain values, so `replay` can rebuild the same shapes on a
freshly built model without unpickling code.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.core.layer_types import has_fact
from learnsparse.layers.lowered_conv import LoweredConv2d
from learnsparse.layers.residual_blocks import residual_blocks

from . import dependency_graph
from .channel_pruning import prune_dead_channels
from .channel_rules import cached_zero_masks, unread_inputs, zero_filters
from .dead_branches import dead_branch_names, shortcut_only
from .fold_batchnorm import fold_batchnorms
from .fold_permutations import fold_output_permutations
from .lowering import lowered_fibres
from .module_state import kept_state


def _has_dead_structure(model: nn.Module) -> bool:
    """Cheap check so models without structured zeros skip the dependency graph. Models that
    already hold deployed group convs (CondenseNet, FLGC) skip it too: their padded or
    gathered channels are index-addressed, which the dependency graph cannot see."""
    if any(has_fact(m, "index_addressed") for m in model.modules()):
        return False
    for m in model.modules():
        if type(m) in (nn.Conv2d, nn.Linear):
            if zero_filters(m).any() or unread_inputs(m).any():
                return True
        elif isinstance(m, nn.BatchNorm2d) and m.affine and ((m.weight == 0) & (m.bias == 0)).any():
            return True
    return False


def _kept_note(kept: dict | None) -> str:
    return f" ({kept['channels']} zero channels kept: {kept['reason']})" if kept else ""


def no_conv_structure(model: nn.Module) -> str | None:
    """A one-line reason for models the structure passes cannot apply to: transformers (ViT,
    Swin), whose only spatial conv is the patch embedding and whose LayerNorms and attention
    mix every channel."""
    spatial = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    attention = any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    norms = any(isinstance(m, nn.LayerNorm) for m in model.modules())
    if len(spatial) <= 1 and (attention or norms):
        return ("no conv structure to remove: one conv (the patch embedding), then attention and LayerNorm, "
                "which mix every channel")
    return None


def remove_dead_structure(model: nn.Module, example_inputs: torch.Tensor) -> tuple[list[tuple[str, str, str]], dict]:
    """Apply the passes in place. Returns report rows (layer, before, after) and the edits."""
    rows: list[tuple[str, str, str]] = []
    edits: dict = {"shortcut_only": [], "pruning_history": [], "bias_added": [], "lowered": {}}
    blocks = dict(residual_blocks(model))
    for name in dead_branch_names(model):
        model.set_submodule(name, shortcut_only(blocks[name]))
        rows.append((name, type(blocks[name]).__name__, "ShortcutOnly"))
        edits["shortcut_only"].append(name)
    note, channels = no_conv_structure(model), None
    if note:
        rows.append(("", type(model).__name__, note))
    else:
        with cached_zero_masks():  # the check and the pass read each weight's zeros once
            channels = prune_dead_channels(model, example_inputs) if _has_dead_structure(model) else None
    if channels is not None:
        kept = {k["layer"]: k for k in channels.kept}
        for n, m, b, a in channels.changed:
            rows.append((n, f"{type(m).__name__} ×{b}", f"{type(m).__name__} ×{a}" + _kept_note(kept.pop(n, None))))
        for n, k in kept.items():
            kind = type(model.get_submodule(n)).__name__
            rows.append((n, f"{kind} ×{k['of']}", f"{kind} ×{k['of']}" + _kept_note(k)))
        edits["pruning_history"], edits["bias_added"] = channels.history, channels.bias_added
        edits["kept_zeros"] = channels.kept
    for name, lowered in lowered_fibres(model).items():
        conv = model.get_submodule(name)
        model.set_submodule(name, lowered)
        rows.append((name, f"Conv2d {conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]} fibres",
                     f"LoweredConv2d {lowered.weight.shape[1]} fibres"))
        edits["lowered"][name] = torch.stack([lowered.fibre_channel, lowered.fibre_row, lowered.fibre_col], 1)
    edits["permutations_folded"] = fold_output_permutations(model)
    edits["batchnorm_folded"] = [list(p) for p in fold_batchnorms(model)]
    rows += [(bn, "BatchNorm2d", f"folded into {conv}") for conv, bn in edits["batchnorm_folded"]]
    return rows, edits


def replay(model: nn.Module, edits: dict, example_inputs: torch.Tensor) -> None:
    """Give a freshly built model the shapes `remove_dead_structure` produced (weights come after)."""
    for name in edits.get("shortcut_only", []):
        model.set_submodule(name, shortcut_only(model.get_submodule(name)))
    for name in edits.get("bias_added", []):
        layer = model.get_submodule(name)
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
    if edits.get("pruning_history"):
        # The same graph the pass used (its grouped-conv pruner, its opaque reshapes).
        DG = dependency_graph.build(model, example_inputs)
        with kept_state(model):
            DG.load_pruning_history(edits["pruning_history"])
    for name, fibres in edits.get("lowered", {}).items():
        conv = model.get_submodule(name)
        weight = torch.zeros(conv.out_channels, len(fibres))
        bias = torch.zeros(conv.out_channels) if conv.bias is not None else None
        model.set_submodule(name, LoweredConv2d(weight, fibres, bias, conv.kernel_size, conv.stride, conv.padding))
    if edits.get("permutations_folded"):
        fold_output_permutations(model)  # the same folds: the state dict then fills the values
    fold_batchnorms(model, edits.get("batchnorm_folded", []), values=False)
