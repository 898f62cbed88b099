"""`build(cfg) -> Run`: everything a config names, built once; `Run.train()` runs it.

The command line builds the run before Hydra makes the run folder (a failed start costs one
line and leaves nothing behind) and hands that same Run to the Hydra task; `train(cfg)` is
`build(cfg).train()` for tests and notebooks. Building writes no file.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from learnsparse.core.counting import model_stats
from learnsparse.core.distributed import DistEnv, init_distributed, shutdown_distributed
from learnsparse.core.errors import UserError, find_cause, first_line
from learnsparse.core.plugins import build_node, build_plugins
from learnsparse.core.record import model_name, rebuild

from .config_checks import check_config
from .devices import select_device
from .held_log import held, tell
from .hooks import CheckpointHook, EvalHook, MetricsLogHook, ProgressBarHook, TrainStatsHook
from .init_weights import init_weights
from .loaders import build_loaders
from .seeding import seed_everything
from .start import Start, find_start, restore
from .step_checkpoints import step_options
from .teacher import build_distill
from .trainer import Trainer

log = logging.getLogger("learnsparse")


def build_data(cfg: DictConfig):
    """The DataBundle, checked against the model config."""
    bundle = build_node(cfg.data.dataset, "data.dataset")
    # A model of the user's may not take these arguments; the ones it takes must fit the data.
    if cfg.model.get("num_classes") is not None and int(cfg.model.num_classes) != bundle.num_classes:
        raise UserError(f"model.num_classes={cfg.model.num_classes} does not fit {bundle.name}, which has "
                        f"{bundle.num_classes} classes")
    if cfg.model.get("in_channels") is not None and int(cfg.model.in_channels) != bundle.in_channels:
        raise UserError(f"model.in_channels={cfg.model.in_channels} does not fit {bundle.name}, whose images have "
                        f"{bundle.in_channels} channels")
    return bundle


def build_model(cfg: DictConfig, start_from: dict | None, what: str) -> torch.nn.Module:
    """This run's model. `start_from` (a checkpoint to resume or to initialise from) brings the
    edits its run made and its learned structure: `rebuild` redoes them on this run's model
    config, then the weights load. Without one, the model is built from the config."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    record = (start_from or {}).get("record") or {}
    try:
        model = rebuild({"model": model_cfg, "edits": record.get("edits", []),
                         "structure": record.get("structure", {})})
    except UserError:
        raise
    except Exception as e:
        cause = first_line(find_cause(e), limit=None)
        if start_from is None:  # nothing to rebuild: the model config itself does not build
            raise UserError(f"cannot build model={model_name(model_cfg)} ({cause})") from e
        raise UserError(f"{what}: cannot rebuild its model on model={model_name(model_cfg)} ({cause})") from e
    return model


def build_group_hooks(cfg: DictConfig, group: str) -> list:
    """The hooks of a config group (`logger`, `callbacks`), each named by its key."""
    return [named_hook(build_node(node, f"{group}.{name}"), name) for name, node in (cfg.get(group) or {}).items()]


def build_hooks(cfg: DictConfig, plugins: list, loggers: list, callbacks: list, val_loader, output_dir: Path,
                dist_env: DistEnv) -> list:
    """The run's hooks, in order: progress bar; sparsity plugins (config order); training
    statistics; evaluation; checkpoints (after evaluation: best.pt needs this epoch's top-1,
    and a failed evaluation leaves last epoch's last.pt to debug); then, on rank 0, the
    metrics log and the loggers (they write what the hooks before them measured); last the
    `callbacks` group, general-purpose hooks of the user's (they see the step complete)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    hooks = [ProgressBarHook(enabled=None if dist_env.is_main else False), *plugins, TrainStatsHook(),
             EvalHook(val_loader), CheckpointHook(str(output_dir / "checkpoints"), resolved, dist_env.is_main,
                                                  **step_options(cfg.trainer.get("checkpoint")))]
    if dist_env.is_main:
        hooks += [MetricsLogHook(str(output_dir / "metrics.jsonl")), *loggers]
    return hooks + callbacks


def _plain(node):
    """A config node as plain Python (`trainer.compile` may be a mapping)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def named_hook(hook, name: str):
    if getattr(hook, "name", None) is None:
        hook.name = name
    return hook


def build_optimization(cfg: DictConfig, model: torch.nn.Module, steps_per_epoch: int):
    optimizer = build_node(cfg.optim, "optim")(params=[p for p in model.parameters() if p.requires_grad])
    epochs = int(cfg.trainer.epochs)
    scheduler = build_node(cfg.lr_scheduler, "lr_scheduler")(
        optimizer, total_steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch)
    return optimizer, scheduler


def build_model_and_plugins(cfg: DictConfig, start: Start,
                            input_shape: list[int] | None = None) -> tuple[torch.nn.Module, list]:
    """The model (rebuilt with the edits of the run it starts from), its starting weights, then
    the plugins, which may change it: all before the optimizer sees the parameters."""
    what = f"checkpoint {start.resume_path}" if start.resume else f"trainer.init_from={start.init_path}"
    model = build_model(cfg, start.resume or start.init, what)
    if start.init is not None:
        init_weights(model, start.init, start.init_path)
    distill = build_distill(cfg, model, start)  # the teacher is taken before plugins change the model
    return model, [*build_plugins(cfg, model, input_shape), *distill]


def build_trainer(cfg: DictConfig, model: torch.nn.Module, bundle, device: torch.device, dist_env: DistEnv):
    """The Trainer over this model and data (DDP-wrapped under torchrun), and the val loader."""
    seed = int(cfg.seed)
    train_loader, val_loader, generator = build_loaders(
        bundle, batch_size=int(cfg.data.batch_size), eval_batch_size=cfg.data.get("eval_batch_size"),
        num_workers=int(cfg.data.num_workers), pin_memory=bool(cfg.data.pin_memory), device=device,
        dist_env=dist_env, seed=seed, persistent_workers=cfg.data.get("persistent_workers"),
        prefetch_factor=cfg.data.get("prefetch_factor"))
    if len(train_loader) == 0:
        raise UserError(f"{bundle.name}: the training split is empty")
    optimizer, scheduler = build_optimization(cfg, model, len(train_loader))
    wrapped = model
    if dist_env.enabled:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    trainer = Trainer(wrapped, optimizer, train_loader, epochs=int(cfg.trainer.epochs), device=device,
                      lr_scheduler=scheduler, seed=seed, amp=cfg.trainer.get("amp"),
                      grad_clip=cfg.trainer.get("grad_clip"), channels_last=bool(cfg.trainer.get("channels_last")),
                      rank=dist_env.rank, loader_generator=generator, unwrapped_model=model,
                      compile=_plain(cfg.trainer.get("compile")),
                      requeue_on_preempt=bool(cfg.trainer.get("requeue_on_preempt")))
    example = bundle.val[0][0].unsqueeze(0).to(device, memory_format=trainer.memory_format)
    trainer.model_stats = model_stats(model, example)
    trainer.input_shape = list(example.shape[1:])
    return trainer, val_loader


@dataclass
class Run:
    """One training run, built from its config: what `build` made, ready to train."""
    cfg: DictConfig
    dist_env: DistEnv
    device: torch.device
    data: object  # the DataBundle
    start: Start
    model: torch.nn.Module
    plugins: list
    loggers: list  # the `logger` group (rank 0 only)
    callbacks: list  # the `callbacks` group
    trainer: Trainer
    output_dir: Path
    # What the build logged: the CLI builds before Hydra sets up the run's log (held_log.py).
    held_log: list = field(default_factory=list, repr=False)

    def is_for(self, cfg: DictConfig) -> bool:
        """True when `cfg` is the config this run was built from (the Hydra task's config is
        composed again, from the same overrides, in Hydra's own run)."""
        return OmegaConf.to_container(cfg, resolve=True) == OmegaConf.to_container(self.cfg, resolve=True)

    def train(self) -> dict:
        """Train to the last epoch; the final metrics, the run's folder and its model's size."""
        # Only rank 0 narrates (every rank takes the same decisions); warnings still show.
        level = log.level
        if not self.dist_env.is_main:
            log.setLevel(max(level, logging.WARNING))
        try:
            return self._train()
        finally:
            log.setLevel(level)
            self.close()

    def close(self) -> None:
        """Leave the process group the build joined (under torchrun); a run not trained ends here."""
        shutdown_distributed()

    def _train(self) -> dict:
        tell(log, self.held_log)
        trainer, stats = self.trainer, self.trainer.model_stats
        log.info("model %s: %s params, %.4g MFLOPs per image (%s MACs); %d epochs of %d steps on %s",
                 model_name(OmegaConf.to_container(self.cfg.model, resolve=True)), f"{stats['params']:,}",
                 stats["flops"] / 1e6, f"{stats['macs']:,}", trainer.epochs, trainer.steps_per_epoch, self.device)
        with warnings.catch_warnings():
            # Channels-last 1x1 weights: DDP compares strides even over size-1 dimensions, where
            # both layouts are the same memory, and warns on every step (pytorch/pytorch#157862).
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            trainer.train()
        final = dict(trainer.history[-1]) if trainer.history else {}
        final.update(output_dir=str(self.output_dir), params=stats["params"], flops=stats["flops"])
        return final


def build(cfg: DictConfig) -> Run:
    """Check the config and build its run: device (joining the process group under torchrun),
    data, the model where it starts from, plugins, loggers, callbacks, the Trainer with its
    hooks, and a resumed run's state. Everything that can fail before training fails here,
    as a UserError; no file is written."""
    check_config(cfg)
    dist_env = init_distributed(str(cfg.trainer.get("device", "auto")))
    try:
        with held(log) as held_log:
            run = _build(cfg, dist_env)
    except BaseException:
        tell(log, held_log)
        shutdown_distributed()
        raise
    run.held_log = held_log
    return run


def _build(cfg: DictConfig, dist_env: DistEnv) -> Run:
    output_dir = Path(cfg.paths.output_dir)
    device = select_device(str(cfg.trainer.get("device", "auto")), dist_env.local_rank)
    seed_everything(int(cfg.seed))
    bundle = build_data(cfg)
    start = find_start(cfg)
    model, plugins = build_model_and_plugins(cfg, start, list(bundle.val[0][0].shape))
    model.to(device, memory_format=torch.channels_last if cfg.trainer.get("channels_last") else torch.contiguous_format)
    trainer, val_loader = build_trainer(cfg, model, bundle, device, dist_env)
    loggers = build_group_hooks(cfg, "logger") if dist_env.is_main else []
    callbacks = build_group_hooks(cfg, "callbacks")
    try:
        trainer.register_hooks(build_hooks(cfg, plugins, loggers, callbacks, val_loader, output_dir, dist_env))
    except ValueError as e:  # two hooks claiming one state key or loss term
        raise UserError(first_line(e, limit=None)) from e
    if start.resume is not None:
        restore(trainer, start.resume, start.resume_path)
    return Run(cfg, dist_env, device, bundle, start, model, plugins, loggers, callbacks, trainer, output_dir)


def train(cfg: DictConfig) -> dict:
    """Build the run a config names and train it; returns the last epoch's metrics."""
    return build(cfg).train()
