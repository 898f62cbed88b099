"""The training loop. It knows only the loop: evaluation, checkpoints, logging and every
sparsity method are hooks (see hook_base.py for the contract)."""
from __future__ import annotations

import contextlib
import time
import weakref
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from learnsparse.errors import UserError

from .events import EventStorage
from .hook_base import HookBase, overrides
from .seeding import epoch_seed, seed_everything

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    pass


def check_distinct(hooks: list[HookBase]) -> None:
    """Every hook has its own checkpoint key and its own loss terms, or the run does not start."""
    keys = [h.state_key for h in hooks]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise ValueError(f"hooks share a state key {sorted(dupes)}: give each a distinct `name`")
    owners: dict[str, str] = {"loss_ce": "the trainer"}
    for h in hooks:
        for term in h.loss_names:
            if term in owners:
                raise ValueError(f"loss term {term!r} is claimed by both {owners[term]} and {h.state_key}: "
                                 f"each plugin needs its own term (loss_reg_<plugin name>)")
            owners[term] = h.state_key


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: DataLoader, *,
                 epochs: int, device: torch.device, lr_scheduler=None, seed: int = 0, amp: str | None = None,
                 grad_clip: float | None = None, channels_last: bool = False, rank: int = 0,
                 loader_generator: torch.Generator | None = None, unwrapped_model: nn.Module | None = None):
        self.model = model
        # The module whose weights hooks read and checkpoints store (not the DDP wrapper).
        self.unwrapped_model = unwrapped_model if unwrapped_model is not None else model
        self.optimizer = optimizer
        self.train_loader = train_loader
        self.lr_scheduler = lr_scheduler
        self.epochs = epochs
        self.device = device
        self.seed = seed
        self.rank = rank
        self.grad_clip = grad_clip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.loader_generator = loader_generator
        if amp not in (None, *_AMP_DTYPES):
            raise ValueError(f"trainer.amp must be one of null, bf16, fp16 (got {amp!r})")
        self.amp_dtype = _AMP_DTYPES.get(amp)
        # Only fp16 needs loss scaling; bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.steps_per_epoch = len(train_loader)
        self.max_iter = epochs * self.steps_per_epoch
        self.start_epoch = 0
        self.epoch = 0
        self.iter = 0
        self.progress = 0.0
        self.losses: dict[str, torch.Tensor] = {}
        self.epoch_metrics: dict[str, float] = {}
        self.history: list[dict] = []
        self.hooks: list[HookBase] = []
        # Scalars, images and histograms hooks report; the writers drain it on rank 0.
        self.events = EventStorage(enabled=rank == 0)

    # ---- hooks -------------------------------------------------------------------------
    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        for h in hooks:
            if h is None:
                continue
            h.trainer = weakref.proxy(self)
            self.hooks.append(h)
        check_distinct(self.hooks)
        # Per-step points are hot: call only hooks that implement them.
        self._step_hooks = {m: [h for h in self.hooks if overrides(h, m)]
                            for m in ("before_step", "extra_losses", "after_backward", "after_step")}

    def _call(self, method: str) -> None:
        for h in self.hooks:
            getattr(h, method)()

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.unwrapped_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "scaler": self.scaler.state_dict(),
            "hooks": {h.state_key: h.state_dict() for h in self.hooks},
            "epoch": self.epoch,
            "iter": self.iter,
            "history": self.history,
        }

    def load_state_dict(self, ckpt: dict) -> None:
        # Hooks first: a sparsity plugin may restore masks or layer structure the weights need.
        for h in self.hooks:
            if h.state_key in ckpt.get("hooks", {}):
                h.load_state_dict(ckpt["hooks"][h.state_key])
        self.unwrapped_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.lr_scheduler is not None and ckpt.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.history = list(ckpt.get("history", []))
        self.start_epoch = ckpt["epoch"] + 1
        self.iter = ckpt["iter"]
        self.epoch = ckpt["epoch"]
        self.progress = self.iter / max(self.max_iter, 1)

    # ---- loop ----------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train(self) -> None:
        self._call("before_train")
        for self.epoch in range(self.start_epoch, self.epochs):
            self._start_epoch_rng()
            self.epoch_metrics = {}
            self._call("before_epoch")
            self.model.train()
            t0 = time.perf_counter()
            seen = 0
            for batch in self.train_loader:
                self.run_step(batch)
                seen += len(batch[1])
            elapsed = time.perf_counter() - t0
            self.epoch_metrics.update(epoch=self.epoch, epoch_time=elapsed, images_per_s=seen / max(elapsed, 1e-9),
                                      lr=self.optimizer.param_groups[0]["lr"])
            # Appended before the hooks fill it, so the checkpoint written in after_epoch has it.
            self.history.append(self.epoch_metrics)
            self._call("after_epoch")
            self.events.drain()  # what no writer took this epoch is dropped, not kept for the run
        self._call("after_train")

    def _start_epoch_rng(self) -> None:
        seed = epoch_seed(self.seed, self.epoch, self.rank)
        seed_everything(seed)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(epoch_seed(self.seed, self.epoch))
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)

    def run_step(self, batch) -> None:
        self.progress = self.iter / self.max_iter
        for h in self._step_hooks["before_step"]:
            h.before_step()
        images, targets = batch
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        with self.autocast():
            logits = self.model(images)
            losses = {"loss_ce": F.cross_entropy(logits, targets)}
            for h in self._step_hooks["extra_losses"]:
                for term, value in h.extra_losses().items():
                    if term not in h.loss_names:  # what check_distinct read at the start must be what comes
                        raise UserError(f"{h.state_key} returned the loss term {term!r}, which its `loss_names` "
                                        f"{tuple(h.loss_names)} does not declare")
                    if term in losses:  # a term nobody declared, clashing: never overwrite silently
                        raise ValueError(f"loss term {term!r} from {h.state_key} is already in this step's "
                                         f"losses; declare distinct `loss_names`")
                    losses[term] = value
        total = sum(losses.values())
        # One host sync per step: the price of naming the exact step where training diverged.
        if not torch.isfinite(total):
            raise NonFiniteLossError(
                f"non-finite loss at step {self.iter} (epoch {self.epoch}): "
                + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                + "; the last good checkpoint is kept"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)  # hooks and clipping see true gradients
        for h in self._step_hooks["after_backward"]:
            h.after_backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        losses["loss_total"] = total
        self.losses = losses
        self.last_logits, self.last_targets = logits, targets
        self.iter += 1
        for h in self._step_hooks["after_step"]:
            h.after_step()
