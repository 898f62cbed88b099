"""Write `last.pt` every epoch and `best.pt` when validation top-1 improves; with
`every_steps` / `every_minutes` also mid-epoch, as `step-<iter>.pt` linked to `last.pt`
(step_checkpoints.py), the newest `keep` of them kept.

Runs after evaluation: best.pt needs this epoch's top-1, and an evaluation that fails loses
at most that one epoch, since last.pt from the epoch before is still on disk.
"""
from __future__ import annotations

import time
from pathlib import Path

from learnsparse.core.checkpoint_io import link_atomic, rng_state, save_atomic
from learnsparse.core.hook_base import HookBase
from learnsparse.core.record import architecture_record

from ..step_checkpoints import prune, step_file
from .structure_key import structure_key


class CheckpointHook(HookBase):
    def __init__(self, directory: str, config: dict | None = None, is_main: bool = True, monitor: str = "val_top1",
                 every_steps: int | None = None, every_minutes: float | None = None, keep: int = 1):
        self.directory = Path(directory)
        self.every_steps, self.every_minutes, self.keep = every_steps, every_minutes, keep
        self._last_save = time.monotonic()
        self.config = config or {}
        self.is_main = is_main
        self.monitor = monitor
        self.best = float("-inf")
        self.last_structure_key: str | None = None  # structure_key of the last epoch's network

    def checkpoint(self) -> dict:
        t = self.trainer
        ckpt = {**t.state_dict(), "rng": rng_state(), "config": self.config, "best": self.best,
                "input_shape": list(getattr(t, "input_shape", []))}
        if self.config.get("model"):
            # What the model is (its _target_, the edits plugins made, its learned structure):
            # rebuilt by learnsparse.rebuild for resume, export and load.
            ckpt["record"] = architecture_record(t.unwrapped_model, self.config["model"])
        return ckpt

    def after_epoch(self) -> None:
        value = self.trainer.epoch_metrics.get(self.monitor)
        # best.pt holds the best epoch of the network's current structure: when a plugin cuts,
        # condenses or swaps layers, the epochs before no longer count (exporting "the best"
        # must give the pruned network, not the dense one whose accuracy was higher).
        key = structure_key(self.trainer.unwrapped_model)
        if self.last_structure_key is not None and key != self.last_structure_key:
            self.best = float("-inf")
        self.last_structure_key = key
        improved = value is not None and value > self.best
        if improved:
            self.best = value
        self.trainer.epoch_metrics[f"best_{self.monitor}"] = self.best
        if not self.is_main:
            return
        self._last_save = time.monotonic()
        ckpt = self.checkpoint()
        save_atomic(ckpt, self.directory / "last.pt")
        if improved:
            save_atomic(ckpt, self.directory / "best.pt")

    # ---- step checkpoints (the trainer asks at the end of every step but an epoch's last) ----
    def before_train(self) -> None:
        self.trainer.step_checkpointer = self
        self._last_save = time.monotonic()

    def due_by_steps(self) -> bool:
        return bool(self.every_steps) and self.trainer.iter % self.every_steps == 0

    def due_by_time(self) -> bool:
        """Clock-based, so only rank 0's answer counts: the trainer broadcasts it."""
        return bool(self.every_minutes) and time.monotonic() - self._last_save >= 60.0 * self.every_minutes

    def save_step(self) -> Path | None:
        """`step-<iter>.pt`, written atomically, then `last.pt` as a second name of it."""
        self._last_save = time.monotonic()
        if not self.is_main:
            return None
        path = step_file(self.directory, self.trainer.iter)
        save_atomic(self.checkpoint(), path)
        link_atomic(path, self.directory / "last.pt")
        prune(self.directory, self.keep)
        return path

    def state_dict(self) -> dict:
        return {"best": self.best, "structure": self.last_structure_key}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best", float("-inf"))
        self.last_structure_key = state.get("structure")
