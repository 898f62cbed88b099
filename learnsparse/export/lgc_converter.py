"""A learned group conv anywhere in a model → index-select + grouped conv + shuffle."""
from learnsparse.nn.deployed import IndexSelectGroupConv
from learnsparse.nn.learned_group_conv import LearnedGroupConv

from .registry import register_converter


@register_converter(LearnedGroupConv)
def convert_learned_group_conv(module: LearnedGroupConv) -> IndexSelectGroupConv:
    return IndexSelectGroupConv.from_trained(module)
