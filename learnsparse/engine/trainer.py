"""The training loop. It knows only the loop: evaluation, checkpoints, logging and every
sparsity method are hooks (see core/hook_base.py for the contract)."""
from __future__ import annotations

import contextlib
import itertools
import logging
import time
import weakref
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from learnsparse.core.checkpoint_io import set_rng_state
from learnsparse.core.distributed import agree_any, barrier
from learnsparse.core.errors import UserError
from learnsparse.core.events import EventStorage
from learnsparse.core.hook_base import HookBase, overrides

from .compiling import ModelCompiler, compile_spec
from .preemption import Preempted, PreemptionHandler, requeue_slurm_job
from .seeding import epoch_seed, seed_everything

log = logging.getLogger("learnsparse")

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
                 loader_generator: torch.Generator | None = None, unwrapped_model: nn.Module | None = None,
                 compile=None, requeue_on_preempt: bool = False):
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
        self.epoch_step = 0  # steps done in the current epoch
        self._resume_skip, self._resume_rng = 0, None  # a mid-epoch resume: steps done, RNG state then
        self.step_checkpointer = None  # the hook that writes step checkpoints (CheckpointHook sets it)
        self.preemption = PreemptionHandler()
        self.requeue_on_preempt = requeue_on_preempt
        spec = compile_spec(compile)
        self.compiler = ModelCompiler(spec) if spec is not None else None
        self.compiled_model = self.compiler.compile(model, "start") if self.compiler else None
        self.progress = 0.0
        self.losses: dict[str, torch.Tensor] = {}
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None  # (images, targets) of this step
        self.outputs: torch.Tensor | None = None  # the model's logits for self.batch
        self.ce_weight = 1.0  # weight of loss_ce in the total
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
        if self.compiler is not None:  # the limits fit the structure changes the plugins announce
            self.compiler.set_limits(sum(int(getattr(h, "structure_changes", 0) or 0) for h in self.hooks))
        # Per-step points are hot: call only hooks that implement them.
        self._step_hooks = {m: [h for h in self.hooks if overrides(h, m)]
                            for m in ("before_step", "extra_losses", "after_backward", "after_step")}

    def _call(self, method: str) -> None:
        for h in self.hooks:
            getattr(h, method)()

    # ---- model surgery (engine/surgery.py) -------------------------------------------------
    def replace_modules(self, mapping: dict[str, nn.Module], *, verify: bool = True, edit: dict | None = None,
                        **options):
        """Change the model during training, the one way it changes: verified, optimizer state
        carried, record edit declared, DDP rewrapped, every hook told (see surgery.py)."""
        from .surgery import replace_modules

        return replace_modules(self, mapping, verify=verify, edit=edit, **options)

    def notify_model_changed(self, mapping: dict[str, nn.Module]) -> None:
        """The one place that reacts to a changed model: every hook's `on_model_changed`.
        replace_modules calls it; so does a user's own edit of `unwrapped_model`."""
        for h in self.hooks:
            h.on_model_changed(mapping)
        if self.compiler is not None:  # a new graph, compiled on purpose (compiling.py)
            kinds = sorted({type(m).__name__ for m in mapping.values()})
            cause = f"{len(mapping)} module(s) replaced at step {self.iter} (now {', '.join(kinds)})"
            self.compiled_model = self.compiler.recompile(self.model, cause)

    @property
    def forward_model(self) -> nn.Module:
        """What runs the forward, in training and evaluation: the compiled model (trainer.compile)
        or the model itself (the DDP wrapper under torchrun)."""
        return self.compiled_model if self.compiled_model is not None else self.model

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
            # Mid-epoch (a step checkpoint) when below steps_per_epoch: resume continues this epoch.
            "epoch_step": self.epoch_step,
            "sampler": self._sampler_state(),
            "history": self.history,
        }

    def _sampler_state(self) -> dict | None:
        sampler = getattr(self.train_loader, "sampler", None)
        position = self.epoch_step * (getattr(self.train_loader, "batch_size", None) or 1)
        return sampler.state_dict(position) if hasattr(sampler, "start_at") else None

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
        self.iter = ckpt["iter"]
        self.epoch = ckpt["epoch"]
        done = ckpt.get("epoch_step")
        if done is None or done >= self.steps_per_epoch:  # written at an epoch's end
            self.start_epoch = self.epoch + 1
        else:  # a step checkpoint: the same epoch, from its next batch, with the RNG state then
            self.start_epoch, self._resume_skip, self._resume_rng = self.epoch, int(done), ckpt.get("rng")
        self.progress = self.iter / max(self.max_iter, 1)

    # ---- loop ----------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train(self) -> None:
        # SIGTERM/SIGUSR1 become a flag, read between steps (preemption.py).
        self.preemption.install()
        try:
            self._train()
        finally:
            self.preemption.uninstall()

    def _train(self) -> None:
        self._call("before_train")
        for self.epoch in range(self.start_epoch, self.epochs):
            skip, self._resume_skip = self._resume_skip, 0
            batches = self._start_epoch_rng(skip)
            self.epoch_metrics = {}
            self._call("before_epoch")
            self.model.train()
            if skip and self._resume_rng is not None:
                # The streams as they were after the step the checkpoint followed (dropout; the
                # augmentations have per-sample streams): the per-epoch seeding above is for epoch starts.
                set_rng_state({k: v.cpu() if torch.is_tensor(v) else v for k, v in self._resume_rng.items()})
                self._resume_rng = None
            t0 = time.perf_counter()
            seen = 0
            self.epoch_step = skip
            for batch in batches:
                self.run_step(batch)
                self.epoch_step += 1
                seen += len(batch[1])
                if self.epoch_step < self.steps_per_epoch:  # the epoch's end writes its own checkpoint
                    self._end_of_step()
            elapsed = time.perf_counter() - t0
            self.epoch_metrics.update(epoch=self.epoch, epoch_time=elapsed, images_per_s=seen / max(elapsed, 1e-9),
                                      lr=self.optimizer.param_groups[0]["lr"])
            # Appended before the hooks fill it, so the checkpoint written in after_epoch has it.
            self.history.append(self.epoch_metrics)
            self._call("after_epoch")
            self.events.drain()  # what no writer took this epoch is dropped, not kept for the run
            if self.epoch < self.epochs - 1 and agree_any(self.preemption.requested)[0]:
                self._stop()  # after_epoch wrote last.pt
        self._call("after_train")

    def _end_of_step(self) -> None:
        """Between two steps of an epoch: a step checkpoint when one is due, and the stop a
        signal asked for. Every rank decides the same (rank 0's clock, any rank's signal)."""
        saver = self.step_checkpointer
        by_time = saver is not None and self.rank == 0 and saver.due_by_time()
        stop, by_time = agree_any(self.preemption.requested, by_time)  # one all-reduce under torchrun
        if saver is not None and (stop or by_time or saver.due_by_steps()):
            saver.save_step()
        if stop:
            if saver is None:
                log.warning("stopping at step %d without a checkpoint: this run has no CheckpointHook", self.iter)
            self._stop()

    def _stop(self) -> None:
        """End the run after a preemption signal, its checkpoint on disk (EXIT_PREEMPTED)."""
        barrier()  # rank 0 has written before any rank leaves: torchrun stops the group when one does
        if self.requeue_on_preempt and self.rank == 0:
            requeue_slurm_job()
        stop = Preempted(self.preemption.signame or "a signal to another rank", self.iter)
        log.warning("%s (exit status %d; trainer.resume=auto continues)", stop, stop.code)
        raise stop

    def _start_epoch_rng(self, skip: int = 0):
        """Seed this epoch's streams; the batches to train on (all, or those after `skip`)."""
        seed = epoch_seed(self.seed, self.epoch, self.rank)
        seed_everything(seed)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(epoch_seed(self.seed, self.epoch))
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        if not skip:
            return self.train_loader
        if hasattr(sampler, "start_at"):  # skipped at the sampler: their images are never loaded
            sampler.start_at(skip * self.train_loader.batch_size)
            return self.train_loader
        log.warning("resuming mid-epoch with a sampler that cannot skip: loading %d batches to drop them", skip)
        return itertools.islice(self.train_loader, skip, None)

    @property
    def last_logits(self) -> torch.Tensor | None:
        """The last step's logits (what `outputs` holds): the step-end hooks read them."""
        return self.outputs

    @property
    def last_targets(self) -> torch.Tensor | None:
        return None if self.batch is None else self.batch[1]

    def run_step(self, batch) -> None:
        self.progress = self.iter / self.max_iter
        for h in self._step_hooks["before_step"]:
            h.before_step()
        images, targets = batch
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        with self.autocast():
            logits = self.forward_model(images)
            # What loss-term plugins see (distillation reads both): this step's batch on the
            # device and the model's outputs, set before any extra_losses() is called.
            self.batch, self.outputs = (images, targets), logits
            ce = F.cross_entropy(logits, targets)
            # A plugin that takes over part of the label loss (KD's 1 − alpha) sets ce_weight.
            losses = {"loss_ce": ce if self.ce_weight == 1.0 else self.ce_weight * ce}
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
        self.iter += 1
        for h in self._step_hooks["after_step"]:
            h.after_step()
