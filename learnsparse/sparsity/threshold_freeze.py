"""`sparsity=threshold`: at a chosen progress, groups with a small norm become exact zeros and
stay zero for the rest of training (fine-tuning with the structure frozen).

Rules for "small": `absolute` (‖w_g‖ < tau), `relative` (‖w_g‖ < tau × the largest group
norm of that layer and kind), or `percentile` (the fraction `tau` of all chosen groups with the
smallest norms, over every layer at once — network slimming's global threshold).

A frozen weight is held at zero by a mask: its gradient is masked before the optimizer step,
the optimizer's state for it (momentum, Adam moments) is zeroed at freezing, and the weight is
masked again after every step (weight decay cannot revive it). A dead filter also kills its
BatchNorm's γ and β, so the channel outputs exactly zero rather than a constant. The masks are
in the checkpoint, so a resumed run keeps the same structure.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from learnsparse.core.distributed import broadcast_tensor_
from learnsparse.core.hook_base import HookBase

from .budget import (
    BudgetState,
    budget_dead_groups,
    budget_metrics,
    budget_record,
    budget_settings,
    increment_due,
    rounded_dead_groups,
    start_budget,
)
from .groups import group_norms
from .layer_pairs import batchnorm_after
from .regularizers.selection_args import chosen_layers

log = logging.getLogger("learnsparse")
RULES = ("absolute", "relative", "percentile")


class ThresholdFreeze(HookBase):
    def __init__(self, model: nn.Module, at: float = 0.5, tau: float = 1e-3, rule: str = "absolute",
                 kinds: list[str] = ("filter",), layers: str = "conv", include: list[str] | None = None,
                 exclude: list[str] | None = None, exclude_first_conv: bool = False, shrink_in_training: bool = True,
                 round_to: int | None = None, budget: dict | None = None):
        if not 0 <= at < 1:
            raise ValueError(f"at must be in [0, 1), got {at}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
        if tau < 0 or (rule == "percentile" and tau >= 1):
            raise ValueError(f"tau must be ≥ 0 (and < 1 for rule=percentile), got {tau}")
        self.model = model
        self.at, self.tau, self.rule = float(at), float(tau), rule
        self.chosen = chosen_layers(model, layers, include, exclude, exclude_first_conv)
        if not self.chosen:
            raise ValueError("no layer matches the threshold's include/exclude patterns")
        self.kinds = list(kinds)
        self.shrink_in_training = shrink_in_training
        # A budget (sparsity/budget.py) replaces the rule: a global ranking of channels meets it on the export.
        self.budget, self.round_to = budget_settings(budget, round_to)
        self.budget_state = BudgetState()
        self.masks: dict[str, torch.Tensor] = {}
        self._frozen = False
        self._shrinking = False

    @property
    def frozen(self) -> bool:
        return self._frozen

    def before_train(self) -> None:
        if self.budget is not None:
            start_budget(self)
        if self.frozen:  # resumed after freezing
            self._move_masks()
            self._apply_to_weights()

    def before_step(self) -> None:
        if self.budget is not None:
            if increment_due(self):
                self.freeze()
            return
        if not self.frozen and self.progress >= self.at:
            self.freeze()

    @torch.no_grad()
    def freeze(self) -> None:
        params = dict(self.model.named_parameters())
        dead = self._dead_groups()
        bn_of = batchnorm_after(self.model) if any(k in ("filter", "layer") for _, _, k, _ in dead) else {}
        masks: dict[str, torch.Tensor] = {}

        def kill(param_name: str, where: torch.Tensor) -> None:
            keep = masks.setdefault(param_name, torch.ones_like(params[param_name], dtype=torch.bool))
            keep &= ~where.expand_as(keep)

        for name, module, kind, is_dead in dead:
            kill(f"{name}.weight", is_dead)
            channels = None
            if isinstance(module, nn.BatchNorm2d):
                channels = is_dead.flatten()
            elif kind in ("filter", "layer") and name in bn_of:
                channels = is_dead.reshape(-1)[:1].expand(module.weight.shape[0]) if kind == "layer" \
                    else is_dead.flatten()
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None and kind in ("filter", "layer"):
                kill(f"{name}.bias", is_dead.flatten() if kind == "filter" else is_dead.reshape(-1)[:1])
            if channels is not None:
                bn_name = name if isinstance(module, nn.BatchNorm2d) else bn_of[name]
                kill(f"{bn_name}.weight", channels)
                kill(f"{bn_name}.bias", channels)
        for n, old in self.masks.items():  # a budget's later increments keep what earlier ones froze
            masks[n] = masks[n] & old if n in masks else old
        for mask in masks.values():
            broadcast_tensor_(mask)  # every rank freezes what rank 0 froze
        self.masks = masks
        self._frozen = True
        self._apply_to_weights()
        self._mask_optimizer_state()
        zeroed = sum(int((~m).sum()) for m in masks.values())
        # Counted in the groups that were chosen (a slimming channel is one, not its γ and β).
        units = {"filter": "filters", "channel": "channels", "shape": "shape fibres", "kernel2d": "kernels",
                 "layer": "layers", "element": "weights"}
        counted: dict[str, int] = {}
        per_bn: dict[str, tuple[str, torch.Tensor]] = {}  # a channel named by its conv and its BatchNorm: once
        for name, module, kind, is_dead in dead:
            bn = name if isinstance(module, nn.BatchNorm2d) else bn_of.get(name) if kind == "filter" else None
            if bn is None:
                counted[units.get(kind, kind)] = counted.get(units.get(kind, kind), 0) + int(is_dead.sum())
                continue
            unit, seen = per_bn.get(bn, ("filters", torch.zeros_like(is_dead.flatten())))
            per_bn[bn] = ("channels" if isinstance(module, nn.BatchNorm2d) else unit, seen | is_dead.flatten())
        for unit, seen in per_bn.values():
            counted[unit] = counted.get(unit, 0) + int(seen.sum())
        log.info("threshold: froze %s at zero (%d weights with their biases and BatchNorm γ, β) at progress %.3f "
                 "(%s, tau=%g)", ", ".join(f"{n} {u}" for u, n in counted.items()) or "nothing", zeroed,
                 self.progress, self.rule, self.tau)
        if self.shrink_in_training:
            # The zeros are final: train the thinner network (what the export would deploy).
            from .shrink_in_training import shrink_in_training

            self._shrinking = True  # its masks no longer fit mid-surgery: the shrink slices them
            try:
                remaining = shrink_in_training(self.trainer, self.masks)
            finally:
                self._shrinking = False
            if remaining is not None:
                self.masks = remaining

    def on_model_changed(self, mapping: dict) -> None:
        """Rebind to the changed model: the layers it chose (by name), and masks whose parameter
        is still there with its shape (the shrink hands over its own sliced masks after this)."""
        model = self.trainer.unwrapped_model
        self.model = model
        modules = dict(model.named_modules())
        self.chosen = [(n, modules[n]) for n, m in self.chosen if type(modules.get(n)) is type(m)]
        params = dict(model.named_parameters())
        kept = {n: m for n, m in self.masks.items() if n in params and params[n].shape == m.shape}
        if len(kept) < len(self.masks) and not self._shrinking:
            log.warning("threshold: %d frozen masks no longer fit the changed model and are dropped (%s)",
                        len(self.masks) - len(kept), ", ".join(sorted(set(self.masks) - set(kept))))
        self.masks = kept
        self._pairs = None  # the (parameter, mask) pairs were the old parameters

    def _dead_groups(self) -> list[tuple[str, nn.Module, str, torch.Tensor]]:
        if self.budget is not None:
            return budget_dead_groups(self)
        norms = []
        for name, m in self.chosen:
            kinds = ["element"] if isinstance(m, nn.BatchNorm2d) else self.kinds
            for kind in kinds:
                norms.append((name, m, kind, group_norms(m.weight.detach(), kind)))
        if self.round_to:
            return rounded_dead_groups(self, self._rule_dead(norms))
        return self._rule_dead(norms)

    def _rule_dead(self, norms: list) -> list[tuple[str, nn.Module, str, torch.Tensor]]:
        if self.rule == "percentile":
            everything = torch.cat([n.flatten() for *_, n in norms])
            k = int(self.tau * everything.numel())
            cut = everything.kthvalue(k).values if k > 0 else everything.min() - 1
            return [(name, m, kind, n <= cut) for name, m, kind, n in norms]
        if self.rule == "relative":
            return [(name, m, kind, n < self.tau * n.max()) for name, m, kind, n in norms]
        return [(name, m, kind, n < self.tau) for name, m, kind, n in norms]

    def _parameters(self):
        """(parameter, mask) pairs, looked up once per set of masks: this runs twice a step."""
        if not self.masks:
            return []  # nothing frozen yet
        cached = getattr(self, "_pairs", None)
        if cached is None or cached[0] is not self.masks:
            params = dict(self.model.named_parameters())
            cached = (self.masks, [(params[n], m) for n, m in self.masks.items()])
            self._pairs = cached
        return cached[1]

    def _apply_to_weights(self) -> None:
        with torch.no_grad():
            for p, m in self._parameters():
                p.mul_(m)

    def _mask_optimizer_state(self) -> None:
        for p, m in self._parameters():
            for v in self.trainer.optimizer.state.get(p, {}).values():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    v.mul_(m)

    def _move_masks(self) -> None:
        params = dict(self.model.named_parameters())
        self.masks = {n: m.to(params[n].device) for n, m in self.masks.items()}

    def after_backward(self) -> None:
        for p, m in self._parameters():
            if p.grad is not None:
                p.grad.mul_(m)

    def after_step(self) -> None:
        self._apply_to_weights()

    def after_epoch(self) -> None:
        self.trainer.epoch_metrics["frozen_zero_weights"] = sum(int((~m).sum()) for m in self.masks.values())
        self.trainer.epoch_metrics["trained_params"] = sum(p.numel() for p in self.model.parameters())
        if self.budget is not None:
            self.trainer.epoch_metrics.update(budget_metrics(self))

    def state_dict(self) -> dict:
        return {"at": self.at, "tau": self.tau, "rule": self.rule, "frozen": self._frozen,
                "masks": {n: m.cpu() for n, m in self.masks.items()},
                **({"budget": budget_record(self)} if self.budget is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.masks = dict(state.get("masks", {}))
        self._frozen = bool(state.get("frozen", self.masks))
        self.budget_state = BudgetState.from_state(state.get("budget"))
