"""Hooks that tests plug in (as `+callbacks.…`) to stop a run the way a cluster does."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from learnsparse.engine import HookBase


class SignalAtStep(HookBase):
    """Send this process `signal` (a name: SIGTERM, SIGUSR1) after global step `step`; under
    torchrun only on rank `rank` when one is given."""

    def __init__(self, step: int, signal: str = "SIGTERM", rank: int | None = None):
        self.step, self.signal, self.rank = step, signal, rank

    def after_step(self) -> None:
        if self.trainer.iter == self.step and self.rank in (None, int(os.environ.get("RANK", "0"))):
            os.kill(os.getpid(), getattr(signal, self.signal))


class SignalDuringSave(HookBase):
    """SIGTERM after step `step`, and SIGTERM again while the checkpoint it asks for is being
    written (between the two halves of the write: the file on disk, then `last.pt`)."""

    def __init__(self, step: int):
        self.step = step

    def before_train(self) -> None:
        from learnsparse.engine.hooks import checkpoint

        real = checkpoint.save_atomic

        def save_with_a_second_signal(obj, path):
            if not Path(path).name.startswith("step-"):  # the epochs' own checkpoints: untouched
                return real(obj, path)
            os.kill(os.getpid(), signal.SIGTERM)
            real(obj, path)
            os.kill(os.getpid(), signal.SIGUSR1)

        self._patched = (checkpoint, real)
        checkpoint.save_atomic = save_with_a_second_signal

    def after_step(self) -> None:
        if self.trainer.iter == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def after_train(self) -> None:
        module, real = self._patched
        module.save_atomic = real
