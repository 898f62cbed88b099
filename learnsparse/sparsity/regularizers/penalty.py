"""The engine every regularizer shares: λ · Σ over groups of ‖w_g‖₂, in one of two modes.

- `subgradient` (SSL's): after backward, grad += λ · w / ‖w_g‖ for every group, 0 where
  ‖w_g‖ = 0. Groups shrink towards zero but rarely land on it exactly; a threshold (the
  `threshold` plugin) makes the zeros exact.
- `proximal`: after each optimizer step, group soft-thresholding w_g ← w_g · max(0, 1 −
  lr·λ/‖w_g‖), the proximal operator of the penalty. Groups whose norm falls below lr·λ become
  exact zeros with no threshold to choose.

The penalty is not put through autograd: its gradient is known in closed form, so one pass
over each weight is all it costs. Its value (computed once per step, without grad) is reported
as the loss term `loss_reg_<plugin name>` and thus in the logs and TensorBoard.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from learnsparse.core.hook_base import HookBase

from ..groups import KINDS, group_norms

log = logging.getLogger("learnsparse")
MODES = ("subgradient", "proximal")


class GroupPenalty(HookBase):
    def __init__(self, terms: list[tuple[str, nn.Parameter, str]], strength: float, mode: str = "subgradient",
                 until: float = 1.0):
        """`terms`: (layer name, weight, group kind). Active while progress < `until`."""
        if strength < 0:
            raise ValueError(f"strength must be ≥ 0, got {strength}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if not 0 < until <= 1:
            raise ValueError(f"until must be in (0, 1], got {until}")
        if not terms:
            raise ValueError("no layer matches this regularizer's include/exclude patterns")
        bad = sorted({k for _, _, k in terms} - set(KINDS))
        if bad:
            raise ValueError(f"unknown group kinds {bad}; choose from {list(KINDS)}")
        self.terms = terms
        self.strength = float(strength)
        self.mode = mode
        self.until = float(until)
        self._norms: list[torch.Tensor] | None = None
        self._lrs: list[float] = []

    @property
    def active(self) -> bool:
        return self.strength > 0 and bool(self.terms) and self.progress < self.until

    @property
    def loss_name(self) -> str:
        return f"loss_reg_{self.state_key}"

    def before_train(self) -> None:
        # A plugin built after this one may have replaced layers (sparsity=[l1,flgc] makes the
        # convs FLGConvs): the terms follow their layers by name from the start.
        self._rebind()

    def on_model_changed(self, mapping: dict) -> None:
        self._rebind()

    def _rebind(self) -> None:
        """Each term follows its layer (by name) to the weight now there: a thinner conv after a
        shrink. A layer that is gone, or no longer has a weight of that kind (a branch replaced
        by its shortcut, a learned layer swapped for its deployed form), leaves the penalty.
        Then each term's optimizer group (for the proximal step's learning rate)."""
        model = getattr(self.trainer, "unwrapped_model", None)  # (a bare harness may have none)
        modules = dict(model.named_modules()) if model is not None else {}
        terms, gone = [], []
        for name, w, kind in self.terms:
            new = getattr(modules.get(name), "weight", None) if model is not None else w
            if isinstance(new, nn.Parameter) and new.dim() == w.dim():
                terms.append((name, new, kind))
            else:
                gone.append(name)
        if gone:
            log.info("%s: %d layers left the model and are no longer regularized (%s)", self.state_key,
                     len(set(gone)), ", ".join(sorted(set(gone))[:5]) + (" …" if len(set(gone)) > 5 else ""))
        self.terms = terms
        self._norms = None
        groups = self.trainer.optimizer.param_groups
        owner = {id(p): i for i, g in enumerate(groups) for p in g["params"]}
        self._group_of = [owner.get(id(w)) for _, w, _ in self.terms]

    def extra_losses(self) -> dict[str, torch.Tensor]:
        if not self.active:
            self._norms = None
            return {}
        with torch.no_grad():
            self._norms = [group_norms(w, kind) for _, w, kind in self.terms]
            value = self.strength * torch.stack([n.sum() for n in self._norms]).sum()
        return {self.loss_name: value}

    def after_backward(self) -> None:
        if self._norms is None:
            return
        if self.mode == "proximal":
            groups = self.trainer.optimizer.param_groups
            self._lrs = [groups[i]["lr"] if i is not None else 0.0 for i in self._group_of]
            return
        with torch.no_grad():
            for (_, w, _), norms in zip(self.terms, self._norms):
                # ‖w_g‖ = 0 means every weight of the group is 0, so w / tiny is exactly 0 there.
                step = w.div(norms.clamp_min(torch.finfo(w.dtype).tiny)).mul_(self.strength)
                if w.grad is None:
                    w.grad = step
                else:
                    w.grad.add_(step)

    def after_step(self) -> None:
        if self.mode != "proximal" or self._norms is None:
            return
        with torch.no_grad():
            for (_, w, kind), lr in zip(self.terms, self._lrs):
                threshold = lr * self.strength
                if threshold > 0:
                    scale = 1 - threshold / group_norms(w, kind)  # −inf on zero groups → 0 below
                    w.mul_(scale.clamp_min_(0))
        self._norms = None

    def state_dict(self) -> dict:
        return {"strength": self.strength, "mode": self.mode, "until": self.until}
