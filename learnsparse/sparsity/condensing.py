"""CondenseNet's condensing schedule: C-1 stages over the first part of training.

The schedule sets the stage from `progress`; each LearnedGroupConv decides which inputs go
(`condense_to`). When progress has passed several stage boundaries at once — a resumed run,
a very short run — every missed stage is applied in order, so the network never skips a
stage and exports with fewer inputs per group than its masks say.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from learnsparse.engine.distributed import broadcast_tensor_
from learnsparse.engine.hook_base import HookBase
from learnsparse.nn.learned_group_conv import LearnedGroupConv

from .connectivity import connectivity_image

log = logging.getLogger("learnsparse")


def stage_at(progress: float, condense_factor: int, condense_fraction: float) -> int:
    """Stage s is reached at progress s/(C-1) · condense_fraction (CondenseNet: fraction 0.5)."""
    last = condense_factor - 1
    if last <= 0:
        return 0
    return min(last, int(progress / condense_fraction * last + 1e-9))


class CondensingSchedule(HookBase):
    def __init__(self, model: nn.Module, condense_fraction: float = 0.5, group_lasso: float = 0.0,
                 log_images: bool = True):
        if not 0 < condense_fraction <= 1:
            raise ValueError(f"condense_fraction must be in (0, 1], got {condense_fraction}")
        if group_lasso < 0:
            raise ValueError(f"group_lasso must be ≥ 0, got {group_lasso}")
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LearnedGroupConv)]
        if not self.layers:
            raise ValueError("sparsity=condensenet needs a model with LearnedGroupConv layers "
                             "(model=condensenet50 … condensenet182, condensenet74_c4/_c8, condensenet_mini)")
        self.condense_fraction = condense_fraction
        self.group_lasso = group_lasso
        self.log_images = log_images

    def before_train(self) -> None:
        self._log_connectivity()

    def before_step(self) -> None:
        changed = False
        for _, layer in self.layers:
            target = stage_at(self.progress, layer.condense_factor, self.condense_fraction)
            if target > int(layer.stage):
                layer.condense_to(target)
                # Every rank ranks the same synchronized weights, but ties and reduction order
                # could differ: rank 0's masks are the ones everybody keeps.
                broadcast_tensor_(layer.mask)
                changed = True
        if changed:
            log.info("condensing: stage %s at progress %.3f", self.stages(), self.progress)
            self._log_connectivity()

    def stages(self) -> list[int]:
        return sorted({int(layer.stage) for _, layer in self.layers})

    def extra_losses(self) -> dict[str, torch.Tensor]:
        if not self.group_lasso:
            return {}
        active = [layer for _, layer in self.layers if int(layer.stage) < layer.max_stage]
        if not active:
            return {}
        return {f"loss_reg_{self.state_key}": self.group_lasso * sum(layer.group_lasso() for layer in active)}

    def after_epoch(self) -> None:
        m = self.trainer.epoch_metrics
        m["condense_stage"] = min(int(layer.stage) for _, layer in self.layers)
        kept = sum(float(layer.mask.sum()) for _, layer in self.layers)
        total = sum(layer.mask.numel() for _, layer in self.layers)
        m["lgc_connections_kept"] = kept / total

    def _log_connectivity(self) -> None:
        if not self.log_images or self.trainer is None or not self.trainer.events.enabled:
            return
        for name, layer in self.layers:
            self.trainer.events.put_image(f"connectivity/{name}", connectivity_image(layer), self.trainer.iter)

    def state_dict(self) -> dict:
        # Masks and stages are model buffers and travel with the weights; this records the
        # schedule's own settings so a resumed run can tell if they changed.
        return {"condense_fraction": self.condense_fraction, "stages": [int(m.stage) for _, m in self.layers]}

    def load_state_dict(self, state: dict) -> None:
        if abs(state.get("condense_fraction", self.condense_fraction) - self.condense_fraction) > 1e-12:
            log.warning("condensing: resumed with condense_fraction %s (checkpoint had %s)",
                        self.condense_fraction, state["condense_fraction"])
