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


def trainable_form(module: FLGConv) -> nn.Module | None:
    """Per-group convs, or one grouped conv when the groups are equal: no padding weights,
    which training would move away from zero. None when a group has filters but no inputs
    (only padding computes those): the layer then keeps training masked."""
    in_group, out_group = module.assignments()
    in_sizes = torch.bincount(in_group, minlength=module.groups)
    out_sizes = torch.bincount(out_group, minlength=module.groups)
    if bool(((in_sizes == 0) & (out_sizes > 0)).any()):
        return None
    used = out_sizes > 0
    equal = bool((in_sizes[used] == in_sizes[used][0]).all() and (out_sizes[used] == out_sizes[used][0]).all())
    layout = "padded" if equal and bool(used.all()) and bool((in_sizes > 0).all()) else "split"
    return from_connectivity(module.weight, module.bias, module.connectivity(), module.stride, module.padding, layout)


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
                    dense_form=dense_form, trainable_form=trainable_form)
