"""The edits an export makes to a trained model, as `rebuild` redoes them when a deployed
model is loaded: convert the trained layers, the structure passes, the lossy classifier
pruning, the memory format, the thinned layers' padded widths. Weights come afterwards, from the saved state dict."""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.record import register_edit, restore_structure

from .classifier import last_linear, prune_classifier_inputs
from .registry import convert_modules
from .structure.passes import replay
from .thinned_widths import pad_channels


@register_edit("convert")
@torch.no_grad()
def redo_convert(model: nn.Module, edit: dict) -> None:
    # The converters read the learned structure (masks, assignments) the export saw.
    restore_structure(model, edit.get("structure", {}))
    convert_modules(model, edit.get("forms"))


@register_edit("structure_passes")
def redo_structure_passes(model: nn.Module, edit: dict) -> None:
    replay(model, edit["edits"], torch.zeros(1, *edit["input_shape"]))


@register_edit("prune_classifier")
@torch.no_grad()
def redo_prune_classifier(model: nn.Module, edit: dict) -> None:
    name, linear = last_linear(model)
    model.set_submodule(name, prune_classifier_inputs(linear, edit["keep"]))


@register_edit("memory_format")
def redo_memory_format(model: nn.Module, edit: dict) -> nn.Module:
    return model.to(memory_format=torch.channels_last if edit["channels_last"] else torch.contiguous_format)


@register_edit("pad_channels")
def redo_pad_channels(model: nn.Module, edit: dict) -> nn.Module:
    pad_channels(model, edit["layers"])
    return model.to(memory_format=torch.channels_last) if edit.get("channels_last") else model
