"""The dense equivalent of a trained model: every trained layer as a plain conv whose weights
hold the learned zeros. It is what a user has without learnsparse's export (the baseline every
deployment speed is quoted against) and the dense tactic of a layer."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from learnsparse.layer_types import layer_type


def plain_conv(weight: torch.Tensor, bias: torch.Tensor | None, like) -> nn.Conv2d:
    """An nn.Conv2d with these weights and `like`'s stride and padding."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), like.stride, like.padding,
                     bias=bias is not None).to(weight.device)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


@torch.no_grad()
def dense_equivalent(model: nn.Module) -> nn.Module:
    """A copy of `model` with every trained layer in its dense form (masks baked in)."""
    dense = copy.deepcopy(model).eval()

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            entry = layer_type(child)
            if entry is not None and entry.dense_form is not None:
                setattr(parent, name, entry.dense_form(child))
            else:
                visit(child)

    visit(dense)
    return dense
