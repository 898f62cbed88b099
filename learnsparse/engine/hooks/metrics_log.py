"""`metrics.jsonl`, one line per epoch, and the same line in the log."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from learnsparse.core.hook_base import HookBase

log = logging.getLogger("learnsparse")


class MetricsLogHook(HookBase):
    def __init__(self, path: str):
        self.path = Path(path)

    def before_train(self) -> None:
        """Start the file from the run's history: a run resumed into a new folder then holds
        every epoch, and one resumed in its own folder drops any line written after the
        checkpoint it continues from."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(m, default=float) + "\n" for m in self.trainer.history))
        tmp.replace(self.path)

    def after_epoch(self) -> None:
        m = self.trainer.epoch_metrics
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(m, default=float) + "\n")
        shown = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        log.info("epoch %d/%d  %s", m["epoch"] + 1, self.trainer.epochs,
                 "  ".join(f"{k}={v:.4g}" for k, v in shown.items() if k != "epoch"))
