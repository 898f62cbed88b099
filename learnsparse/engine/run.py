"""`train(cfg)`: build everything a config names, run the Trainer, return final metrics."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from learnsparse.errors import UserError, first_line

from .checkpoint_io import load_checkpoint, set_rng_state
from .config_checks import check_config
from .devices import select_device
from .distributed import DistEnv, init_distributed, shutdown_distributed
from .hooks import CheckpointHook, EvalHook, MetricsLogHook, ProgressBarHook, TensorBoardHook, TrainStatsHook
from .loaders import build_loaders
from .model_stats import model_stats
from .resume import find_resume_checkpoint
from .seeding import seed_everything
from .trainer import Trainer

log = logging.getLogger("learnsparse")


def _instantiate(node, what: str, **kwargs):
    try:
        return instantiate(node, **kwargs)
    except UserError:
        raise
    except Exception as e:
        # Hydra wraps the real cause; the innermost message is the one that names the problem.
        cause = e
        while cause.__cause__ is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from e
        raise UserError(f"cannot build {what}: {first_line(cause, limit=None)}") from e


def build_plugins(cfg: DictConfig, model: torch.nn.Module) -> list:
    """Each entry of `sparsity` is a partial that takes the model; it may change the model's
    layers, so plugins are built before the optimizer sees the parameters."""
    plugins = []
    for name, node in (cfg.get("sparsity") or {}).items():
        plugin = _instantiate(node, f"sparsity.{name}")
        if callable(plugin) and not hasattr(plugin, "before_train"):
            try:
                plugin = plugin(model=model)
            except (ValueError, TypeError) as e:  # a plugin refusing its settings or this model
                raise UserError(f"sparsity.{name}: {first_line(e, limit=None)}") from e
        plugin.name = name
        plugins.append(plugin)
    return plugins


def init_weights(model: torch.nn.Module, path: Path) -> None:
    """Start from another run's weights (e.g. SSL from a dense model): weights only, a new run."""
    ckpt = load_checkpoint(path)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"trainer.init_from={path} does not fit this model ({first_line(e)})") from e
    log.info("initialized the model from %s", path)


def train(cfg: DictConfig) -> dict:
    check_config(cfg)
    dist_env = init_distributed(str(cfg.trainer.get("device", "auto")))
    # Only rank 0 narrates (every rank takes the same decisions); warnings still show.
    level = log.level
    if not dist_env.is_main:
        log.setLevel(max(level, logging.WARNING))
    try:
        return _train(cfg, dist_env)
    finally:
        log.setLevel(level)
        shutdown_distributed()


def _train(cfg: DictConfig, dist_env: DistEnv) -> dict:
    output_dir = Path(cfg.paths.output_dir)
    device = select_device(str(cfg.trainer.get("device", "auto")), dist_env.local_rank)
    seed = int(cfg.seed)
    seed_everything(seed)

    bundle = _instantiate(cfg.data.dataset, "data.dataset")
    if int(cfg.model.num_classes) != bundle.num_classes:
        raise UserError(f"model.num_classes={cfg.model.num_classes} does not fit {bundle.name}, which has "
                        f"{bundle.num_classes} classes")
    if int(cfg.model.in_channels) != bundle.in_channels:
        raise UserError(f"model.in_channels={cfg.model.in_channels} does not fit {bundle.name}, whose images have "
                        f"{bundle.in_channels} channels")
    model = _instantiate(cfg.model, "model")
    if cfg.trainer.get("init_from"):
        init_weights(model, Path(str(cfg.trainer.init_from)))
    plugins = build_plugins(cfg, model)
    memory_format = torch.channels_last if cfg.trainer.get("channels_last") else torch.contiguous_format
    model.to(device, memory_format=memory_format)

    train_loader, val_loader, generator = build_loaders(
        bundle, batch_size=int(cfg.data.batch_size), eval_batch_size=cfg.data.get("eval_batch_size"),
        num_workers=int(cfg.data.num_workers), pin_memory=bool(cfg.data.pin_memory), device=device,
        dist_env=dist_env, seed=seed)
    if len(train_loader) == 0:
        raise UserError(f"{bundle.name}: the training split is empty")
    optimizer = _instantiate(cfg.optim, "optim")(params=[p for p in model.parameters() if p.requires_grad])
    epochs = int(cfg.trainer.epochs)
    scheduler = _instantiate(cfg.lr_scheduler, "lr_scheduler")(
        optimizer, total_steps=epochs * len(train_loader), steps_per_epoch=len(train_loader))

    example = bundle.val[0][0].unsqueeze(0).to(device, memory_format=memory_format)
    stats = model_stats(model, example)
    wrapped = model
    if dist_env.enabled:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    trainer = Trainer(wrapped, optimizer, train_loader, epochs=epochs, device=device, lr_scheduler=scheduler,
                      seed=seed, amp=cfg.trainer.get("amp"), grad_clip=cfg.trainer.get("grad_clip"),
                      channels_last=bool(cfg.trainer.get("channels_last")), rank=dist_env.rank,
                      loader_generator=generator, unwrapped_model=model)
    trainer.model_stats = stats
    trainer.input_shape = list(example.shape[1:])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    hooks = [ProgressBarHook(enabled=None if dist_env.is_main else False), *plugins, TrainStatsHook(),
             EvalHook(val_loader), CheckpointHook(str(output_dir / "checkpoints"), resolved, dist_env.is_main)]
    if dist_env.is_main:
        hooks.append(MetricsLogHook(str(output_dir / "metrics.jsonl")))
        for name, node in (cfg.get("logger") or {}).items():
            hooks.append(_instantiate(node, f"logger.{name}"))
    trainer.register_hooks(hooks)

    experiment_dir = Path(cfg.paths.log_dir) / str(cfg.task_name) if cfg.paths.get("log_dir") else None
    resume_from = find_resume_checkpoint(cfg.trainer.get("resume"), output_dir, experiment_dir, resolved)
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, map_location=device)
        try:
            trainer.load_state_dict(ckpt)
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserError(f"checkpoint {resume_from} does not fit this config ({first_line(e)})") from e
        set_rng_state({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in ckpt["rng"].items()})
        log.info("resumed from %s at epoch %d (step %d)", resume_from, trainer.start_epoch, trainer.iter)

    if dist_env.is_main:
        log.info("model %s: %s params, %.4g MFLOPs per image (%s MACs); %d epochs of %d steps on %s",
                 cfg.model.name, f"{stats['params']:,}", stats["flops"] / 1e6, f"{stats['macs']:,}", epochs,
                 len(train_loader), device)
    with warnings.catch_warnings():
        # Channels-last 1x1 weights: DDP compares strides even over size-1 dimensions, where
        # both layouts are the same memory, and warns on every step (pytorch/pytorch#157862).
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        trainer.train()
    final = dict(trainer.history[-1]) if trainer.history else {}
    final.update(output_dir=str(output_dir), params=stats["params"], flops=stats["flops"])
    return final
