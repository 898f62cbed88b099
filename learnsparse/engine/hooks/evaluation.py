"""Evaluate on the validation split after every epoch: loss, top-1, top-5."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from learnsparse.core.distributed import all_reduce_sum_
from learnsparse.core.hook_base import HookBase


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, autocast=None,
             memory_format=torch.contiguous_format) -> dict[str, float]:
    """Sum loss and hits on this rank's shard, then across ranks, so the numbers are global."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    for images, targets in loader:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        sums += torch.stack([
            F.cross_entropy(logits, targets, reduction="sum").double(),
            hits[:, :1].sum().double(), hits.sum().double(), torch.tensor(len(targets), device=device).double(),
        ])
    all_reduce_sum_(sums)
    model.train(was_training)
    loss, top1, top5, n = sums.tolist()
    n = max(n, 1.0)
    return {"val_loss": loss / n, "val_top1": 100 * top1 / n, "val_top5": 100 * top5 / n}


class EvalHook(HookBase):
    def __init__(self, loader: DataLoader):
        self.loader = loader

    def after_epoch(self) -> None:
        t = self.trainer
        # forward_model: the compiled model under trainer.compile, else the model itself.
        model = getattr(t, "forward_model", t.model)
        t.epoch_metrics.update(evaluate(model, self.loader, t.device, t.autocast, t.memory_format))
