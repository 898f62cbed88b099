"""TensorBoard scalars: every loss term every `log_every` steps, epoch metrics each epoch."""
from __future__ import annotations

from ..hook_base import HookBase


class TensorBoardHook(HookBase):
    def __init__(self, log_dir: str, log_every: int = 50):
        self.log_dir = log_dir
        self.log_every = log_every
        self.writer = None

    def _open(self) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # heavy import: only when logging

            self.writer = SummaryWriter(self.log_dir)

    def before_train(self) -> None:
        self._open()
        for k, v in getattr(self.trainer, "model_stats", {}).items():
            self.writer.add_scalar(f"model/{k}", v, 0)

    def after_step(self) -> None:
        t = self.trainer
        if t.iter % self.log_every:
            return
        for k, v in t.losses.items():
            self.writer.add_scalar(f"train/{k}", v.item(), t.iter)
        self.writer.add_scalar("train/lr", t.optimizer.param_groups[0]["lr"], t.iter)

    def after_epoch(self) -> None:
        t = self.trainer
        for k, v in t.epoch_metrics.items():
            if k != "epoch" and isinstance(v, (int, float)):
                group = "val" if k.startswith("val_") or k.startswith("best_") else "epoch"
                self.writer.add_scalar(f"{group}/{k}", v, t.epoch + 1)
        self.writer.flush()

    def add_image(self, tag: str, image, step: int | None = None) -> None:
        """For plugins that draw (connectivity pictures): CHW float in [0, 1]. Plugins also
        write their own scalars and histograms through `add_scalar` and `add_histogram`."""
        self._open()  # plugins may draw in their before_train, before this hook's
        self.writer.add_image(tag, image, self.trainer.iter if step is None else step)

    def add_scalar(self, tag: str, value: float, step: int | None = None) -> None:
        self._open()
        self.writer.add_scalar(tag, value, self.trainer.iter if step is None else step)

    def add_histogram(self, tag: str, values, step: int | None = None) -> None:
        self._open()
        self.writer.add_histogram(tag, values, self.trainer.iter if step is None else step)

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
