"""Fold each inference BatchNorm into the convolution that feeds it.

In eval mode BatchNorm is y = s·x + t per channel (s = γ/√(σ²+ε), t = β − s·μ). When its input
is a convolution's output that nothing else reads, scaling that conv's filters by s and
setting its bias to s·b + t computes the same thing with one pass over memory fewer. Only
this pattern is folded: a BatchNorm before a conv (pre-activation nets such as DenseNet and
CondenseNet, where a ReLU sits in between) cannot be folded exactly.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.core.layer_types import layer_type

from .tracing import trace


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, batchnorm) names where the BatchNorm is the conv's only reader."""
    traced = trace(model)
    if traced is None:
        return []
    graph, calls = traced
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and calls[node.target] == 1):
            continue
        src = node.args[0] if node.args else None
        conv = modules.get(src.target) if getattr(src, "op", None) == "call_module" else None
        if _computed_convs(conv) and len(src.users) == 1 \
                and calls[src.target] == 1 and len(node.args) == 1 and not node.kwargs:
            pairs.append((src.target, node.target))
    return pairs


def _computed_convs(layer: nn.Module | None) -> list[nn.Conv2d]:
    """The convs a BatchNorm after `layer` folds into; [] when it cannot fold."""
    if type(layer) is nn.Conv2d:
        return [layer]
    entry = layer_type(layer) if layer is not None else None
    return entry.computed_convs(layer) if entry is not None and entry.computed_convs else []


def _output_position(layer: nn.Module) -> torch.Tensor | None:
    entry = layer_type(layer)
    return entry.output_position(layer) if entry is not None and entry.output_position else None


def _ensure_bias(conv: nn.Conv2d) -> None:
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype))


@torch.no_grad()
def fold_batchnorms(model: nn.Module, pairs: list[tuple[str, str]] | None = None,
                    values: bool = True) -> list[tuple[str, str]]:
    """Fold in place; returns the pairs folded. `values=False` only makes the shapes (a bias
    on each conv, the BatchNorm gone), for rebuilding a saved model before its state dict."""
    pairs = foldable_pairs(model) if pairs is None else [tuple(p) for p in pairs]
    for conv_name, bn_name in pairs:
        layer, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        convs = _computed_convs(layer)
        if values:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
                torch.rsqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else 0) - scale * bn.running_mean
            position = _output_position(layer)
            if position is not None:
                # BatchNorm channel c reads computed channel position[c]; padding channels
                # (never read) keep scale 1 and shift 0.
                computed = sum(c.out_channels for c in convs)
                s = torch.ones(computed, dtype=scale.dtype, device=scale.device)
                t = torch.zeros(computed, dtype=scale.dtype, device=scale.device)
                s[position], t[position] = scale, shift
                scale, shift = s, t
            start = 0
            for conv in convs:
                end = start + conv.out_channels
                s, t = scale[start:end], shift[start:end]
                old_bias = conv.bias.clone() if conv.bias is not None else torch.zeros_like(s)
                conv.weight.mul_(s.reshape(-1, 1, 1, 1))
                _ensure_bias(conv)
                conv.bias.copy_(old_bias * s + t)
                start = end
        else:
            for conv in convs:
                _ensure_bias(conv)
        model.set_submodule(bn_name, nn.Identity())
    return pairs
