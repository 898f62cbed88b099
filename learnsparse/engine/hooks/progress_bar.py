"""A tqdm bar per epoch with loss, accuracy and throughput; silent when stderr is not a TTY."""
from __future__ import annotations

import sys
import time

from learnsparse.core.hook_base import HookBase


class ProgressBarHook(HookBase):
    def __init__(self, refresh_every: int = 20, enabled: bool | None = None):
        self.refresh_every = refresh_every
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None

    def before_epoch(self) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        t = self.trainer
        self.bar = tqdm(total=t.steps_per_epoch, desc=f"epoch {t.epoch + 1}/{t.epochs}", leave=False,
                        dynamic_ncols=True)
        self._t0, self._seen = time.perf_counter(), 0

    def after_step(self) -> None:
        if self.bar is None:
            return
        t = self.trainer
        self._seen += len(t.last_targets)
        self.bar.update(1)
        if t.iter % self.refresh_every == 0:
            acc = (t.last_logits.argmax(1) == t.last_targets).float().mean().item() * 100
            rate = self._seen / max(time.perf_counter() - self._t0, 1e-9)
            self.bar.set_postfix(loss=f"{t.losses['loss_total'].item():.3f}", acc=f"{acc:.1f}", img_s=f"{rate:.0f}")

    def after_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
