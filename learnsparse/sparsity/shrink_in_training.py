"""Shrink in place: once threshold-and-freeze has fixed its zeros, train the thinner network.

After freezing, a dead filter (its BatchNorm's γ and β killed with it) outputs exactly zero
for the rest of training, and a dead residual branch adds nothing. The export's first two
structure passes remove exactly these — branches become their shortcut, dead channels leave
every layer that writes or reads them (Torch-Pruning's dependency graph) — and keep every
BatchNorm as a BatchNorm, so the result trains. The shrink runs them inside the training:

- verified like an export (eval outputs and training-mode losses equal, on copies);
- each surviving parameter's optimizer state, and each remaining freeze mask (zeros that are
  not whole channels), is sliced exactly as the weights were: the recorded pruning is replayed
  on a copy of the old network whose weights are the state (or mask) tensors;
- the optimizer, DDP wrapper and architecture record follow, as for condensing in training.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

from learnsparse.export.structure.channel_pruning import remove_dead_channels
from learnsparse.export.structure.dead_branches import dead_branch_names, shortcut_only
from learnsparse.export.structure.passes import replay
from learnsparse.models.residual_blocks import residual_blocks
from learnsparse.record import declare_edit, register_edit

from .condense_in_training import check_same_function, probe_input, replace_in_optimizer, rewrap
from .sliced_state import holding, sliced_optimizer_state

log = logging.getLogger("learnsparse")
OP = "shrink_in_training"


@torch.no_grad()
def thin_structure(model: nn.Module, example: torch.Tensor) -> dict:
    """Remove dead residual branches and dead channels in place; the edits that replay it."""
    edits: dict = {"shortcut_only": [], "pruning_history": [], "bias_added": []}
    blocks = dict(residual_blocks(model))
    for name in dead_branch_names(model):
        model.set_submodule(name, shortcut_only(blocks[name]))
        edits["shortcut_only"].append(name)
    _, edits["pruning_history"], edits["bias_added"] = remove_dead_channels(model, example)
    return edits


@torch.no_grad()
def _replayed(before: nn.Module, values: dict[str, torch.Tensor], edits: dict, example: torch.Tensor) -> dict:
    """The named parameters of the thinned network, holding `values` (by old name) sliced."""
    shadow = holding(before, values)
    replay(shadow, edits, example)
    return {n: p.detach() for n, p in shadow.named_parameters()}  # the shadow is not kept: no copy


def shrink_in_training(trainer, masks: dict[str, torch.Tensor], rtol: float = 1e-5) -> dict[str, torch.Tensor] | None:
    """Thin the trainer's model where it is dead; returns the freeze masks for the thinned
    parameters (all-ones masks dropped), or None when nothing could be removed."""
    model = trainer.unwrapped_model
    example = torch.zeros(1, *trainer.input_shape, device=trainer.device)
    before = copy.deepcopy(model)
    old = dict(model.named_parameters())
    edits = thin_structure(model, example)
    if not edits["shortcut_only"] and not edits["pruning_history"]:
        return None
    check_same_function(before, model, probe_input(trainer), rtol)
    if trainer.memory_format is torch.channels_last:
        model.to(memory_format=torch.channels_last)

    new = dict(model.named_parameters())
    optimizer = trainer.optimizer
    group_index = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    sliced, scalars = sliced_optimizer_state(optimizer, old, lambda values: _replayed(before, values, edits, example))
    # A surviving parameter keeps its state, sliced; a bias the pass added (to absorb a folded
    # constant) starts without state, as a new parameter does.
    added: dict[nn.Parameter, dict] = {p: {} for p in new.values()}
    for name, p in new.items():
        state = optimizer.state.get(old[name], {}) if name in old else {}
        if state:
            added[p] = {key: v.to(device=p.device) for key, v in sliced.get(name, {}).items() if key in state}
            added[p].update(copy.deepcopy(scalars))
    group_of = {p: group_index[id(old[name])] if name in old else 0 for name, p in new.items()
                if name not in old or id(old[name]) in group_index}
    replace_in_optimizer(optimizer, model, list(old.values()), {p: added[p] for p in group_of}, group_of)

    # The zeros that are not whole channels stay frozen on the thinned weights.
    sliced_masks = _replayed(before, {n: m.float() for n, m in masks.items()}, edits, example) if masks else {}
    new_masks = {n: sliced_masks[n].to(new[n].device).bool() for n in masks if n in sliced_masks
                 and not bool(sliced_masks[n].bool().all())}

    declare_edit(model, OP, edits=edits, input_shape=list(trainer.input_shape))
    rewrap(trainer)
    removed = sum(p.numel() for p in old.values()) - sum(p.numel() for p in new.values())
    log.info("threshold: the network now trains without its dead structure (%d branches, %d parameters fewer)",
             len(edits["shortcut_only"]), removed)
    return new_masks


@register_edit(OP)
def redo_shrink(model: nn.Module, edit: dict) -> None:
    replay(model, edit["edits"], torch.zeros(1, *edit["input_shape"]))
