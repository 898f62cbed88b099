"""The dense equivalent of a trained model: every trained layer as a plain conv whose weights
hold the learned zeros. It is what a user has without learnsparse's export (the baseline every
deployment speed is quoted against) and the dense tactic of a layer."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from learnsparse.layer_types import layer_type
from learnsparse.nn.deployed import conv_with


def plain_conv(weight: torch.Tensor, bias: torch.Tensor | None, like) -> nn.Conv2d:
    """An nn.Conv2d with these weights and `like`'s stride and padding."""
    return conv_with(weight, bias, like)


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
