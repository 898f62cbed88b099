"""Shrink in place: once threshold-and-freeze has fixed its zeros, train the thinner network.

After freezing, a dead filter (its BatchNorm's γ and β killed with it) outputs exactly zero
for the rest of training, and a dead residual branch adds nothing. The export's first two
structure passes remove exactly these — branches become their shortcut, dead channels leave
every layer that writes or reads them (Torch-Pruning's dependency graph) — and keep every
BatchNorm as a BatchNorm, so the result trains. The shrink runs those same functions on a copy
of the model and hands the modules that changed to the trainer's one surgery path
(`trainer.replace_modules`, learnsparse/engine/surgery.py), which verifies the change, leaves
the model in the mode it found (the dependency graph puts what it traces in eval mode), slices
each surviving parameter's optimizer state by replaying the recorded pruning on a copy of the
old network whose weights are the state tensors, replaces the parameters in the optimizer,
declares the edit, rewraps DDP and tells every hook. Each remaining freeze mask (zeros that
are not whole channels) is sliced the same way.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

from learnsparse.export.condense import redo_structure_passes
from learnsparse.export.structure.channel_pruning import remove_dead_channels
from learnsparse.export.structure.dead_branches import dead_branch_names, shortcut_only
from learnsparse.export.structure.passes import replay
from learnsparse.layers.residual_blocks import residual_blocks

log = logging.getLogger("learnsparse")
OP = "shrink_in_training"


@torch.no_grad()
def thin_structure(model: nn.Module, example: torch.Tensor) -> dict:
    """Remove dead residual branches and dead channels in place (the export's passes 1 and 2);
    the edits that replay it."""
    edits: dict = {"shortcut_only": [], "pruning_history": [], "bias_added": []}
    blocks = dict(residual_blocks(model))
    for name in dead_branch_names(model):
        model.set_submodule(name, shortcut_only(blocks[name]))
        edits["shortcut_only"].append(name)
    _, edits["pruning_history"], edits["bias_added"] = remove_dead_channels(model, example)
    return edits


def shrink_in_training(trainer, masks: dict[str, torch.Tensor], rtol: float = 1e-5) -> dict[str, torch.Tensor] | None:
    """Thin the trainer's model where it is dead; returns the freeze masks for the thinned
    parameters (all-ones masks dropped), or None when nothing could be removed."""
    model = trainer.unwrapped_model
    example = torch.zeros(1, *trainer.input_shape, device=trainer.device)
    thin = copy.deepcopy(model)  # the passes run on a copy: the live model changes only through surgery
    edits = thin_structure(thin, example)
    if not edits["shortcut_only"] and not edits["pruning_history"]:
        return None
    before = sum(p.numel() for p in model.parameters())
    surgery = trainer.replace_modules(
        {"": thin},
        edit={"op": OP, "redone_by": redo_structure_passes, "edits": edits, "input_shape": list(trainer.input_shape)},
        redo=lambda shadow: replay(shadow, edits, example),
        # A bias the pass added (to absorb a folded constant) starts without state, as a new parameter does.
        fresh=[f"{name}.bias" for name in edits["bias_added"]], rtol=rtol)
    # The zeros that are not whole channels stay frozen on the thinned weights.
    new = dict(model.named_parameters())
    sliced = surgery.carry({n: m.float() for n, m in masks.items()}) if masks else {}
    new_masks = {n: sliced[n].to(new[n].device).bool() for n in masks if n in sliced and n in new
                 and not bool(sliced[n].bool().all())}
    log.info("threshold: the network now trains without its dead structure (%d branches, %d parameters fewer)",
             len(edits["shortcut_only"]), before - sum(p.numel() for p in model.parameters()))
    return new_masks

