"""`train(cfg)`: build everything a config names, run the Trainer, return final metrics."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from learnsparse.errors import UserError, first_line
from learnsparse.record import model_name, rebuild

from .checkpoint_io import load_checkpoint, set_rng_state
from .config_checks import check_config
from .devices import select_device
from .distributed import DistEnv, init_distributed, shutdown_distributed
from .hooks import CheckpointHook, EvalHook, MetricsLogHook, ProgressBarHook, TrainStatsHook
from .loaders import build_loaders
from .model_stats import model_stats
from ..sparsity.connectivity import connectivity_image, fixed_sparse_layers
from .resume import find_resume_checkpoint
from .seeding import seed_everything
from .trainer import Trainer

log = logging.getLogger("learnsparse")


def build_node(node, what: str, **kwargs):
    try:
        return instantiate(node, **kwargs)
    except UserError:
        raise
    except Exception as e:
        # Hydra wraps the real cause; the innermost message is the one that names the problem.
        cause = find_cause(e)
        if isinstance(cause, UserError):
            raise cause from e
        raise UserError(f"cannot build {what}: {first_line(cause, limit=None)}") from e


def find_cause(e: BaseException) -> BaseException:
    """The innermost cause of a wrapped exception (Hydra wraps what a _target_ raised)."""
    while e.__cause__ is not None and not isinstance(e, UserError):
        e = e.__cause__
    return e


def build_plugins(cfg: DictConfig, model: torch.nn.Module) -> list:
    """Each entry of `sparsity` is a partial that takes the model; it may change the model's
    layers, so plugins are built before the optimizer sees the parameters."""
    plugins = []
    for name, node in (cfg.get("sparsity") or {}).items():
        plugin = build_node(node, f"sparsity.{name}")
        if callable(plugin) and not hasattr(plugin, "before_train"):
            try:
                plugin = plugin(model=model)
            except (ValueError, TypeError) as e:  # a plugin refusing its settings or this model
                raise UserError(f"sparsity.{name}: {first_line(e, limit=None)}") from e
        plugin.name = name
        plugins.append(plugin)
    return plugins


def build_data(cfg: DictConfig):
    """The DataBundle, checked against the model config. Pre-flight builds it before Hydra
    makes the run folder; the run then reuses it (an ImageNet folder is scanned once)."""
    key = repr(OmegaConf.to_container(cfg.data.dataset, resolve=True))
    bundle = _PREBUILT_DATA.pop(key, None) or build_node(cfg.data.dataset, "data.dataset")
    # A model of the user's may not take these arguments; the ones it takes must fit the data.
    if cfg.model.get("num_classes") is not None and int(cfg.model.num_classes) != bundle.num_classes:
        raise UserError(f"model.num_classes={cfg.model.num_classes} does not fit {bundle.name}, which has "
                        f"{bundle.num_classes} classes")
    if cfg.model.get("in_channels") is not None and int(cfg.model.in_channels) != bundle.in_channels:
        raise UserError(f"model.in_channels={cfg.model.in_channels} does not fit {bundle.name}, whose images have "
                        f"{bundle.in_channels} channels")
    return bundle


_PREBUILT_DATA: dict[str, object] = {}


def keep_for_the_run(cfg: DictConfig, bundle) -> None:
    _PREBUILT_DATA.clear()
    _PREBUILT_DATA[repr(OmegaConf.to_container(cfg.data.dataset, resolve=True))] = bundle


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
        raise UserError(f"{what}: cannot rebuild its model on model={model_name(model_cfg)} "
                        f"({first_line(find_cause(e), limit=None)})") from e
    return model


def init_weights(model: torch.nn.Module, ckpt: dict, path: Path) -> None:
    """Start from another run's weights (e.g. SSL from a dense model): weights only, a new run."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"trainer.init_from={path} does not fit this model ({first_line(e)})") from e
    log.info("initialized the model from %s", path)


def build_hooks(cfg: DictConfig, plugins: list, val_loader, output_dir: Path,
                dist_env: DistEnv) -> list:
    """The run's hooks, in order: progress bar; sparsity plugins (config order); training
    statistics; evaluation; checkpoints (after evaluation: best.pt needs this epoch's top-1,
    and a failed evaluation leaves last epoch's last.pt to debug); then, on rank 0, the
    metrics log and the loggers (they write what the hooks before them measured); last the
    `callbacks` group, general-purpose hooks of the user's (they see the step complete)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    hooks = [ProgressBarHook(enabled=None if dist_env.is_main else False), *plugins, TrainStatsHook(),
             EvalHook(val_loader), CheckpointHook(str(output_dir / "checkpoints"), resolved, dist_env.is_main)]
    if dist_env.is_main:
        hooks.append(MetricsLogHook(str(output_dir / "metrics.jsonl")))
        hooks += [named_hook(build_node(node, f"logger.{name}"), name)
                  for name, node in (cfg.get("logger") or {}).items()]
    hooks += [named_hook(build_node(node, f"callbacks.{name}"), name)
              for name, node in (cfg.get("callbacks") or {}).items()]
    return hooks


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


def checkpoint_to_resume(cfg: DictConfig) -> tuple[Path | None, dict | None]:
    output_dir = Path(cfg.paths.output_dir)
    experiment_dir = Path(cfg.paths.log_dir) / str(cfg.task_name) if cfg.paths.get("log_dir") else None
    path = find_resume_checkpoint(cfg.trainer.get("resume"), output_dir, experiment_dir,
                                  OmegaConf.to_container(cfg, resolve=True))
    return (path, load_checkpoint(path)) if path is not None else (None, None)


def restore(trainer: Trainer, ckpt: dict, path: Path) -> None:
    try:
        trainer.load_state_dict(ckpt)
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"checkpoint {path} does not fit this config ({first_line(e)})") from e
    set_rng_state({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in ckpt["rng"].items()})
    log.info("resumed from %s at epoch %d (step %d)", path, trainer.start_epoch, trainer.iter)


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


@dataclass
class Start:
    """Where a run starts: a checkpoint to resume, one to take the weights from, or neither."""
    resume_path: Path | None = None
    resume: dict | None = None
    init_path: Path | None = None
    init: dict | None = None


def find_start(cfg: DictConfig) -> Start:
    resume_path, resume = checkpoint_to_resume(cfg)
    if resume is not None or not cfg.trainer.get("init_from"):
        return Start(resume_path, resume)
    init_path = Path(str(cfg.trainer.init_from))
    return Start(init=load_checkpoint(init_path), init_path=init_path)


def build_model_and_plugins(cfg: DictConfig, start: Start) -> tuple[torch.nn.Module, list]:
    """The model (rebuilt with the edits of the run it starts from), its starting weights, then
    the plugins, which may change it: all before the optimizer sees the parameters."""
    what = f"checkpoint {start.resume_path}" if start.resume else f"trainer.init_from={start.init_path}"
    model = build_model(cfg, start.resume or start.init, what)
    if start.init is not None:
        init_weights(model, start.init, start.init_path)
    return model, build_plugins(cfg, model)


def build_trainer(cfg: DictConfig, model: torch.nn.Module, bundle, device: torch.device, dist_env: DistEnv):
    """The Trainer over this model and data (DDP-wrapped under torchrun), and the val loader."""
    seed = int(cfg.seed)
    train_loader, val_loader, generator = build_loaders(
        bundle, batch_size=int(cfg.data.batch_size), eval_batch_size=cfg.data.get("eval_batch_size"),
        num_workers=int(cfg.data.num_workers), pin_memory=bool(cfg.data.pin_memory), device=device,
        dist_env=dist_env, seed=seed)
    if len(train_loader) == 0:
        raise UserError(f"{bundle.name}: the training split is empty")
    optimizer, scheduler = build_optimization(cfg, model, len(train_loader))
    wrapped = model
    if dist_env.enabled:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    trainer = Trainer(wrapped, optimizer, train_loader, epochs=int(cfg.trainer.epochs), device=device,
                      lr_scheduler=scheduler, seed=seed, amp=cfg.trainer.get("amp"),
                      grad_clip=cfg.trainer.get("grad_clip"), channels_last=bool(cfg.trainer.get("channels_last")),
                      rank=dist_env.rank, loader_generator=generator, unwrapped_model=model)
    example = bundle.val[0][0].unsqueeze(0).to(device, memory_format=trainer.memory_format)
    trainer.model_stats = model_stats(model, example)
    trainer.input_shape = list(example.shape[1:])
    # The connection matrix of every layer that has one (fixed tables, IGC, learned groupings
    # as they start), under the tag the sparsity plugins update as the structure changes.
    for name, layer in fixed_sparse_layers(model):
        trainer.events.put_image(f"connectivity/{name}", connectivity_image(layer), 0)
    return trainer, val_loader


def _train(cfg: DictConfig, dist_env: DistEnv) -> dict:
    output_dir = Path(cfg.paths.output_dir)
    device = select_device(str(cfg.trainer.get("device", "auto")), dist_env.local_rank)
    seed_everything(int(cfg.seed))
    bundle = build_data(cfg)
    start = find_start(cfg)
    model, plugins = build_model_and_plugins(cfg, start)
    model.to(device, memory_format=torch.channels_last if cfg.trainer.get("channels_last") else torch.contiguous_format)
    trainer, val_loader = build_trainer(cfg, model, bundle, device, dist_env)
    try:
        trainer.register_hooks(build_hooks(cfg, plugins, val_loader, output_dir, dist_env))
    except ValueError as e:  # two hooks claiming one state key or loss term
        raise UserError(first_line(e, limit=None)) from e
    if start.resume is not None:
        restore(trainer, start.resume, start.resume_path)
    stats = trainer.model_stats
    log.info("model %s: %s params, %.4g MFLOPs per image (%s MACs); %d epochs of %d steps on %s",
             model_name(OmegaConf.to_container(cfg.model, resolve=True)), f"{stats['params']:,}", stats["flops"] / 1e6,
             f"{stats['macs']:,}", trainer.epochs, trainer.steps_per_epoch, device)
    with warnings.catch_warnings():
        # Channels-last 1x1 weights: DDP compares strides even over size-1 dimensions, where
        # both layouts are the same memory, and warns on every step (pytorch/pytorch#157862).
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        trainer.train()
    final = dict(trainer.history[-1]) if trainer.history else {}
    final.update(output_dir=str(output_dir), params=stats["params"], flops=stats["flops"])
    return final
