"""Running means of every loss term and of training accuracy over an epoch."""
from __future__ import annotations

import torch

from learnsparse.core.hook_base import HookBase


class TrainStatsHook(HookBase):
    """Accumulates on the device and syncs once per epoch, so it costs no host sync per step."""

    def before_epoch(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._hits = None
        self._count = 0

    def after_step(self) -> None:
        t = self.trainer
        n = len(t.last_targets)
        for k, v in t.losses.items():
            v = v.detach().float() * n
            self._sums[k] = self._sums[k] + v if k in self._sums else v
        hits = (t.last_logits.detach().argmax(1) == t.last_targets).sum()
        self._hits = hits if self._hits is None else self._hits + hits
        self._count += n

    def after_epoch(self) -> None:
        if not self._count:
            return
        m = self.trainer.epoch_metrics
        for k, v in self._sums.items():
            m[f"train_{k}"] = v.item() / self._count
        m["train_top1"] = 100.0 * self._hits.item() / self._count
