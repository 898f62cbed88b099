"""LearnedGroupConv (anywhere in a model) → index-select + grouped conv + shuffle; its
learned structure is the mask and the stage reached."""
import torch

from learnsparse.layer_types import register_layer_type

from .dense_form import plain_conv
from learnsparse.nn.deployed import IndexSelectGroupConv
from learnsparse.nn.learned_group_conv import LearnedGroupConv


def save_structure(m: LearnedGroupConv) -> dict[str, torch.Tensor]:
    return {"mask": m.mask.detach().cpu().clone(), "stage": m.stage.detach().cpu().clone()}


def restore_structure(m: LearnedGroupConv, structure: dict[str, torch.Tensor]) -> None:
    m.mask.copy_(structure["mask"])
    m.stage.copy_(structure["stage"])


def dense_form(m: LearnedGroupConv):
    return plain_conv(m.masked_weight().detach(), m.conv.bias, m.conv)


register_layer_type(LearnedGroupConv, converter=IndexSelectGroupConv.from_trained, save_structure=save_structure,
                    restore_structure=restore_structure, dense_form=dense_form,
                    trainable_form=IndexSelectGroupConv.from_trained)
