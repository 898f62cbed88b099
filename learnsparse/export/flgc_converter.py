"""FLGConv → PermutedGroupConv with its current hard assignment."""
from learnsparse.nn.flgc import FLGConv
from learnsparse.nn.permuted_group_conv import PermutedGroupConv

from .registry import register_converter


@register_converter(FLGConv)
def convert_flgc(module: FLGConv) -> PermutedGroupConv:
    in_group, out_group = module.assignments()
    return PermutedGroupConv.from_assignment(module.weight, module.bias, in_group, out_group, module.groups,
                                             module.stride, module.padding)
