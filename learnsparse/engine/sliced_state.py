"""Optimizer state follows the weights through a structure change.

When a layer (or a whole network) is converted in the middle of training, each surviving
parameter keeps its momentum or Adam moments, sliced exactly as its weights were. The sure way
to slice a state tensor like its weight is to run the same conversion on a copy of the old
module whose weights *are* the state tensors; model surgery (surgery.py, which every swap and
shrink goes through) does that, through `sliced_optimizer_state`.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn


@torch.no_grad()
def holding(module: nn.Module, values: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `module` whose parameters hold `values` (by name; zeros where none fits)."""
    shadow = copy.deepcopy(module)
    for name, p in shadow.named_parameters():
        v = values.get(name)
        p.copy_(v.to(p.dtype) if v is not None and v.shape == p.shape else torch.zeros_like(p))
    return shadow


def _is_tensor_state(v) -> bool:
    return torch.is_tensor(v) and v.dim() > 0


@torch.no_grad()
def sliced_optimizer_state(optimizer: torch.optim.Optimizer, old: dict[str, nn.Parameter],
                           convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
                           ) -> tuple[dict[str, dict], dict]:
    """The state of the `old` parameters (by name) after the structure change.

    `convert` maps tensors by old parameter name to tensors by new parameter name the way the
    weights were converted. Returns, per new name, its sliced tensor states (momentum, moments),
    and the per-parameter scalars (Adam's step count, the same for every parameter of a group)."""
    states = {name: optimizer.state.get(p, {}) for name, p in old.items()}
    keys = sorted({k for s in states.values() for k, v in s.items() if _is_tensor_state(v)})
    sliced: dict[str, dict] = {}
    for key in keys:
        for name, value in convert({n: s[key] for n, s in states.items() if key in s}).items():
            sliced.setdefault(name, {})[key] = value.detach().clone()
    scalars = {k: v for s in states.values() for k, v in s.items() if not _is_tensor_state(v)}
    return sliced, scalars
