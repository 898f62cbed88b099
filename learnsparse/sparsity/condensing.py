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

from learnsparse.core.distributed import broadcast_tensor_
from learnsparse.core.hook_base import HookBase
from learnsparse.core.layer_types import CONDENSING, learned_by

from .budget_record import record_metrics, record_state, restore_record
from .condense_in_training import choose_before_training, swap_facts, swap_in_training
from .connectivity_images import connectivity_image
from .trainable_forms import RULE, check_choice

log = logging.getLogger("learnsparse")
SWAP_METHOD = "lgc"  # sparsity=condensenet and sparsity=lgc alike


def stage_at(progress: float, condense_factor: int, condense_fraction: float) -> int:
    """Stage s is reached at progress s/(C-1) · condense_fraction (CondenseNet: fraction 0.5)."""
    last = condense_factor - 1
    if last <= 0:
        return 0
    return min(last, int(progress / condense_fraction * last + 1e-9))


def _last_stage(model: nn.Module) -> None:
    """Every learned group conv of `model` at its last stage (its final structure's shape)."""
    for m in model.modules():
        if learned_by(m) == CONDENSING and int(m.stage) < m.max_stage:
            m.condense_to(m.max_stage)


class CondensingSchedule(HookBase):
    def __init__(self, model: nn.Module, condense_fraction: float = 0.5, group_lasso: float = 0.0,
                 log_images: bool = True, condense_in_training: bool = True, trainable_form: str = RULE):
        if not 0 < condense_fraction <= 1:
            raise ValueError(f"condense_fraction must be in (0, 1], got {condense_fraction}")
        if group_lasso < 0:
            raise ValueError(f"group_lasso must be ≥ 0, got {group_lasso}")
        self.layers = [(n, m) for n, m in model.named_modules() if learned_by(m) == CONDENSING]
        # A model rebuilt after the in-training swap has its layers in deployed form already.
        self.swapped = swap_facts(model, SWAP_METHOD)
        if not self.layers and not self.swapped:
            raise ValueError("sparsity=condensenet needs a model with LearnedGroupConv layers "
                             "(model=condensenet50 … condensenet182, condensenet74_c4/_c8, condensenet_mini)")
        self.condense_fraction = condense_fraction
        self.group_lasso = group_lasso
        self.log_images = log_images
        self.condense_in_training = condense_in_training
        self.trainable_form = check_choice(trainable_form)
        self.forms: dict[str, dict] | None = None  # each layer's form after the swap, chosen before training

    def before_train(self) -> None:
        if self.condense_in_training and not self.swapped and self.forms is None:
            # Chosen before the first step, so a run resumed from any checkpoint replays it.
            self.forms = choose_before_training(self.trainer, [n for n, _ in self.layers], _last_stage,
                                                self.trainable_form)
        self._log_connectivity()

    def on_model_changed(self, mapping: dict) -> None:
        # The learned layers still in the model (a swap replaced some by their deployed forms).
        modules = dict(self.trainer.unwrapped_model.named_modules())
        self.layers = [(n, modules[n]) for n, _ in self.layers if learned_by(modules.get(n)) == CONDENSING]

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
            if self.condense_in_training and all(int(m.stage) == m.max_stage for _, m in self.layers):
                self._swap()

    def _swap(self) -> None:
        """Every layer is at its last stage: its structure is final, so it trains deployed."""
        kept = sum(float(m.mask.sum()) for _, m in self.layers) / sum(m.mask.numel() for _, m in self.layers)
        facts = {"stage": self.stages()[0], "kept": kept}
        swap_in_training(self.trainer, [n for n, _ in self.layers], SWAP_METHOD, forms=self.forms, **facts)
        self.swapped = facts  # self.layers followed in on_model_changed

    def stages(self) -> list[int]:
        return sorted({int(layer.stage) for _, layer in self.layers} | ({self.swapped["stage"]} if self.swapped else set()))

    def extra_losses(self) -> dict[str, torch.Tensor]:
        if not self.group_lasso:
            return {}
        active = [layer for _, layer in self.layers if int(layer.stage) < layer.max_stage]
        if not active:
            return {}
        return {f"loss_reg_{self.state_key}": self.group_lasso * sum(layer.group_lasso() for layer in active)}

    def after_epoch(self) -> None:
        m = self.trainer.epoch_metrics
        m["condense_stage"] = min(self.stages())
        if self.layers:
            kept = sum(float(layer.mask.sum()) for _, layer in self.layers)
            m["lgc_connections_kept"] = kept / sum(layer.mask.numel() for _, layer in self.layers)
        else:
            m["lgc_connections_kept"] = self.swapped["kept"]
        m.update(record_metrics(self))

    def _log_connectivity(self) -> None:
        if not self.log_images or self.trainer is None or not self.trainer.events.enabled:
            return
        for name, layer in self.layers:
            self.trainer.events.put_image(f"connectivity/{name}", connectivity_image(layer), self.trainer.iter)

    def state_dict(self) -> dict:
        # Masks and stages are model buffers and travel with the weights; this records the
        # schedule's own settings so a resumed run can tell if they changed.
        return {"condense_fraction": self.condense_fraction, "stages": self.stages(), "forms": self.forms,
                **record_state(self)}

    def load_state_dict(self, state: dict) -> None:
        self.forms = state.get("forms", self.forms)
        restore_record(self, state)  # a budget's choice (lgc), if any
        if abs(state.get("condense_fraction", self.condense_fraction) - self.condense_fraction) > 1e-12:
            log.warning("condensing: resumed with condense_fraction %s (checkpoint had %s)",
                        self.condense_fraction, state["condense_fraction"])
