"""TensorBoard: every loss term every `log_every` steps, epoch metrics each epoch, and every
event other hooks put in `trainer.events` (pictures, histograms, per-layer scalars)."""
from __future__ import annotations

from learnsparse.core.hook_base import HookBase


class TensorBoardHook(HookBase):
    def __init__(self, log_dir: str, log_every: int = 50):
        self.log_dir = log_dir
        self.log_every = log_every
        self.writer = None

    def before_train(self) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy import: only when logging

        self.writer = SummaryWriter(self.log_dir)
        for k, v in getattr(self.trainer, "model_stats", {}).items():
            self.writer.add_scalar(f"model/{k}", v, 0)
        self._write_events()

    def after_step(self) -> None:
        t = self.trainer
        if t.iter % self.log_every:
            return
        for k, v in t.losses.items():
            self.writer.add_scalar(f"train/{k}", v.item(), t.iter)
        self.writer.add_scalar("train/lr", t.optimizer.param_groups[0]["lr"], t.iter)
        self._write_events()

    def after_epoch(self) -> None:
        t = self.trainer
        for k, v in t.epoch_metrics.items():
            if k != "epoch" and isinstance(v, (int, float)):
                group = "val" if k.startswith("val_") or k.startswith("best_") else "epoch"
                self.writer.add_scalar(f"{group}/{k}", v, t.epoch + 1)
        self._write_events()
        self.writer.flush()

    def _write_events(self) -> None:
        write = {"scalar": self.writer.add_scalar, "image": self.writer.add_image,
                 "histogram": self.writer.add_histogram}
        for event in self.trainer.events.drain():
            write[event.kind](event.tag, event.value, event.step)

    def after_train(self) -> None:
        if self.writer is not None:
            self._write_events()
            self.writer.close()
