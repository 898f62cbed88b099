"""Write `last.pt` every epoch and `best.pt` when validation top-1 improves.

Runs after evaluation: best.pt needs this epoch's top-1, and an evaluation that fails loses
at most that one epoch, since last.pt from the epoch before is still on disk.
"""
from __future__ import annotations

from pathlib import Path

from learnsparse.record import architecture_record

from ..checkpoint_io import rng_state, save_atomic
from ..hook_base import HookBase


class CheckpointHook(HookBase):
    def __init__(self, directory: str, config: dict | None = None, is_main: bool = True, monitor: str = "val_top1"):
        self.directory = Path(directory)
        self.config = config or {}
        self.is_main = is_main
        self.monitor = monitor
        self.best = float("-inf")

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
        improved = value is not None and value > self.best
        if improved:
            self.best = value
        self.trainer.epoch_metrics[f"best_{self.monitor}"] = self.best
        if not self.is_main:
            return
        ckpt = self.checkpoint()
        save_atomic(ckpt, self.directory / "last.pt")
        if improved:
            save_atomic(ckpt, self.directory / "best.pt")

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best", float("-inf"))
