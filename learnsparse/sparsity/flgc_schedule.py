"""`sparsity=flgc` / `sparsity=lgc`: learned grouping on any model.

`sparsity=flgc` replaces the model's matching convs with FLGConv (`learnsparse.sparsify`),
learns the input and filter assignments for the first `learn_fraction` of training (the
softmax temperature optionally annealed from `temperature` to `temperature_end`), then
freezes them and fine-tunes the fixed grouping. `sparsity=lgc` replaces them with
CondenseNet's LearnedGroupConv and runs the condensing schedule.

Assignments are parameters (logits), so DDP keeps them equal on every rank; at freezing, rank
0's hard assignment is broadcast so that ties cannot split the ranks.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from learnsparse.core.distributed import broadcast_tensor_
from learnsparse.core.hook_base import HookBase
from learnsparse.core.layer_types import CONDENSING, GROUPING, learned_by
from learnsparse.sparsity.learned_grouping import sparsify

from .budget_groups import budget_setting
from .budget_record import record_metrics, record_state, restore_record
from .condense_in_training import choose_before_training, swap_in_training, swapped_by
from .condensing import SWAP_METHOD, CondensingSchedule
from .connectivity_images import connectivity_image
from .trainable_forms import DEPLOYED, RULE, check_choice

log = logging.getLogger("learnsparse")


def _frozen(model: nn.Module) -> None:
    for m in model.modules():
        if learned_by(m) == GROUPING and not bool(m.frozen):
            m.freeze()


class FLGCSchedule(HookBase):
    def __init__(self, model: nn.Module, groups: int = 4, balanced: bool = False, learn_fraction: float = 0.5,
                 temperature: float = 1.0, temperature_end: float | None = None, include: list[str] | None = None,
                 exclude: list[str] | None = None, log_images: bool = True, assignment_grad_scale: float = 10.0,
                 condense_in_training: bool = True, trainable_form: str = DEPLOYED, budget: dict | None = None):
        if not 0 <= learn_fraction <= 1:
            raise ValueError(f"learn_fraction must be in [0, 1], got {learn_fraction}")
        if temperature <= 0 or (temperature_end is not None and temperature_end <= 0):
            raise ValueError("temperatures must be > 0")
        # A model rebuilt after the in-training swap has its layers in deployed form already.
        self.swapped = bool(swapped_by(model, "flgc"))
        if not self.swapped and not any(learned_by(m) == GROUPING for m in model.modules()):
            picked, self.budget_record = budget_setting(model, budget, "flgc", groups, include, exclude, balanced)
            groups = picked or groups
            sparsify(model, "flgc", groups=groups, include=include, exclude=exclude, balanced=balanced,
                     temperature=temperature)
        self.layers = [(n, m) for n, m in model.named_modules() if learned_by(m) == GROUPING]
        if assignment_grad_scale <= 0:
            raise ValueError(f"assignment_grad_scale must be > 0, got {assignment_grad_scale}")
        for _, m in self.layers:
            m.assignment_grad_scale = assignment_grad_scale
        self.learn_fraction = learn_fraction
        self.temperature, self.temperature_end = temperature, temperature_end
        self.log_images = log_images
        self.condense_in_training = condense_in_training
        self.trainable_form = check_choice(trainable_form)
        self.forms: dict[str, dict] | None = None  # each layer's form after the swap, chosen before training
        self._epoch_start: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_train(self) -> None:
        if self.condense_in_training and not self.frozen and self.forms is None:
            # Chosen before the first step (on a copy frozen now: the shapes the swap will see,
            # near enough to time), so a run resumed from any checkpoint replays it.
            self.forms = choose_before_training(self.trainer, [n for n, _ in self.layers], _frozen,
                                                self.trainable_form)

    def on_model_changed(self, mapping: dict) -> None:
        # The learned layers still in the model (a swap replaced some by their deployed forms).
        modules = dict(self.trainer.unwrapped_model.named_modules())
        kept = [i for i, (n, _) in enumerate(self.layers) if learned_by(modules.get(n)) == GROUPING]
        self.layers = [(self.layers[i][0], modules[self.layers[i][0]]) for i in kept]
        self._epoch_start = [self._epoch_start[i] for i in kept] if self._epoch_start else []

    @property
    def frozen(self) -> bool:
        return all(bool(m.frozen) for _, m in self.layers)

    def before_epoch(self) -> None:
        self._epoch_start = [tuple(t.clone() for t in m.assignments()) for _, m in self.layers]

    def before_step(self) -> None:
        if self.frozen:
            return
        if self.progress >= self.learn_fraction:
            for _, m in self.layers:
                m.freeze()
                broadcast_tensor_(m.in_group)
                broadcast_tensor_(m.out_group)
            log.info("flgc: assignments frozen at progress %.3f", self.progress)
            if self.condense_in_training:
                # Frozen: the grouping is final, so the layers train as grouped convs.
                # self.layers and their epoch-start assignments follow in on_model_changed.
                names = swap_in_training(self.trainer, [n for n, _ in self.layers], "flgc", forms=self.forms)
                self.swapped = bool(names)
            return
        if self.temperature_end is not None:
            # Geometric annealing: equal ratios per unit of progress.
            t = self.progress / self.learn_fraction if self.learn_fraction else 1.0
            temp = self.temperature * (self.temperature_end / self.temperature) ** t
            for _, m in self.layers:
                m.temperature = temp

    def after_epoch(self) -> None:
        changed = total = 0
        for (_, m), (in0, out0) in zip(self.layers, self._epoch_start):
            in1, out1 = m.assignments()
            changed += int((in1 != in0).sum() + (out1 != out0).sum())
            total += in1.numel() + out1.numel()
        metrics = self.trainer.epoch_metrics
        metrics["flgc_assignments_changed_pct"] = 100.0 * changed / max(1, total)
        metrics["flgc_frozen"] = int(self.frozen)
        metrics.update(record_metrics(self))
        if self.log_images and self.trainer.events.enabled:
            for name, m in self.layers:
                self.trainer.events.put_image(f"flgc_connectivity/{name}", connectivity_image(m),
                                              self.trainer.epoch + 1)

    def state_dict(self) -> dict:
        # Logits and frozen assignments are model parameters/buffers and travel with the weights.
        return {"learn_fraction": self.learn_fraction, "frozen": self.frozen, "forms": self.forms, **record_state(self)}

    def load_state_dict(self, state: dict) -> None:
        self.forms = state.get("forms", self.forms)
        restore_record(self, state)


def LGCSchedule(model: nn.Module, groups: int = 4, condense_factor: int = 4, include: list[str] | None = None,
                exclude: list[str] | None = None, condense_fraction: float = 0.5, group_lasso: float = 0.0,
                log_images: bool = True, condense_in_training: bool = True,
                trainable_form: str = RULE, budget: dict | None = None) -> CondensingSchedule:
    """`sparsity=lgc`: LearnedGroupConv in place of matching convs, condensed on CondenseNet's schedule.
    A model that has them already (rebuilt from a checkpoint's record) keeps them."""
    record = None
    if not swapped_by(model, SWAP_METHOD) and not any(learned_by(m) == CONDENSING for m in model.modules()):
        picked, record = budget_setting(model, budget, "lgc", groups, include, exclude)
        condense_factor = picked or condense_factor
        sparsify(model, "lgc", groups=groups, condense_factor=condense_factor, include=include, exclude=exclude)
    schedule = CondensingSchedule(model, condense_fraction=condense_fraction, group_lasso=group_lasso,
                                  log_images=log_images, condense_in_training=condense_in_training,
                                  trainable_form=trainable_form)
    schedule.budget_record = record  # metrics and checkpoint state (sparsity/budget_record.py)
    return schedule
