"""FLGConv → the deployed conv of its connection matrix (its current hard assignment: blocks
are its groups); its learned structure is the assignment of inputs and filters to groups."""
import torch
import torch.nn as nn

from learnsparse.layer_types import register_layer_type

from .dense_form import plain_conv
from learnsparse.nn.flgc import FLGConv

from .connectivity_converter import from_connectivity


def convert_flgc(module: FLGConv) -> nn.Module:
    return from_connectivity(module.weight, module.bias, module.connectivity(), module.stride, module.padding)


def save_structure(m: FLGConv) -> dict[str, torch.Tensor]:
    in_group, out_group = m.assignments()
    return {"in_group": in_group.cpu().clone(), "out_group": out_group.cpu().clone()}


def restore_structure(m: FLGConv, structure: dict[str, torch.Tensor]) -> None:
    m.in_group.copy_(structure["in_group"])
    m.out_group.copy_(structure["out_group"])
    m.frozen.fill_(True)


def dense_form(m: FLGConv):
    weight = m.weight.detach() * m.connection_mask()[:, :, None, None].to(m.weight.dtype)
    return plain_conv(weight, m.bias, m)


register_layer_type(FLGConv, converter=convert_flgc, save_structure=save_structure, restore_structure=restore_structure,
                    dense_form=dense_form)
