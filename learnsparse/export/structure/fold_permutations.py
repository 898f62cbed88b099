"""Move output permutations of exported group convs into the layers that read them.

A PermutedGroupConv computes its filters in group order and then puts them back in the
original order (`out_index`). When that output flows only through BatchNorm and elementwise
ops into convs, the put-back costs nothing if instead the BatchNorm's parameters and the next
layer's input channels are permuted: BatchNorm and elementwise ops act per channel, so they
commute with any channel permutation, and the reader's gather (`in_index`) or weight columns
absorb it. Found with torch.fx; anything else (a residual add, a concatenation, the model's
output) keeps the permutation.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.layers.permuted_group_conv import PermutedGroupConv

from .tracing import trace

_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Identity, nn.Dropout)
_ELEMENTWISE_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu, torch.sigmoid}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid"}


def _is_elementwise(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _ELEMENTWISE_MODULES)
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in _ELEMENTWISE_METHODS


def _on_computed_channels(bn: nn.BatchNorm2d, perm: torch.Tensor, computed: int) -> nn.BatchNorm2d:
    """The BatchNorm over the group output as computed: channel c's statistics at position
    perm[c]; padding positions (never read) get the identity."""
    out = nn.BatchNorm2d(computed, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats).to(perm.device).eval()
    for name in ("weight", "bias", "running_mean", "running_var"):
        source, target = getattr(bn, name), getattr(out, name)
        if source is not None:
            target[perm] = source.to(target.dtype)
    return out


def _path_to_readers(start: fx.Node, modules: dict, calls: dict):
    """BatchNorms on the way and the readers, if the output reaches only foldable layers."""
    norms, readers, frontier = [], [], list(start.users)
    while frontier:
        node = frontier.pop()
        mod = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, PermutedGroupConv) or (type(mod) is nn.Conv2d and mod.groups == 1):
            if node.args[0] is None or len(node.args) != 1 or node.kwargs:
                return None
            readers.append(mod)
        elif isinstance(mod, nn.BatchNorm2d) and calls[node.target] == 1 and len(node.users) >= 1:
            norms.append(node.target)
            frontier += list(node.users)
        elif _is_elementwise(node, modules) and node.target is not operator.add:
            frontier += list(node.users)
        else:
            return None
    return norms, readers


@torch.no_grad()
def fold_output_permutations(model: nn.Module) -> int:
    """Fold every foldable `out_index` in place; returns how many were folded."""
    if not any(isinstance(m, PermutedGroupConv) and m.out_index is not None for m in model.modules()):
        return 0
    traced = trace(model)
    if traced is None:
        return 0
    graph, calls = traced
    modules = dict(model.named_modules())
    folded = 0
    for node in graph.nodes:
        layer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(layer, PermutedGroupConv) or layer.out_index is None or calls[node.target] != 1:
            continue
        perm = layer.out_index  # original channel c lives at position perm[c] of the group output
        selection = perm.numel() != layer.computed_channels  # padded groups: padding channels dropped
        path = _path_to_readers(node, modules, calls)
        if path is None or not path[1]:
            continue
        norms, readers = path
        if selection and not all(isinstance(r, PermutedGroupConv) for r in readers):
            continue  # a plain conv would have to read the padding channels too: more work
        for name in norms:
            model.set_submodule(name, _on_computed_channels(model.get_submodule(name), perm,
                                                            layer.computed_channels))
        for reader in readers:
            if isinstance(reader, PermutedGroupConv):
                index = reader.in_index if reader.in_index is not None else torch.arange(perm.numel())
                reader.in_index = perm[index]
            else:
                reader.weight[:, perm] = reader.weight.clone()
        layer.out_index = None
        folded += 1
    return folded
