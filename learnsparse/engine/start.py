"""Where a run starts: the checkpoint `trainer.resume` names (or `auto` finds), the one
`trainer.init_from` takes the weights from, or neither; and putting a resumed run's state back."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from learnsparse.core.checkpoint_io import load_checkpoint, set_rng_state
from learnsparse.core.errors import UserError, first_line

from .init_weights import load_init
from .resume import find_resume_checkpoint
from .trainer import Trainer

log = logging.getLogger("learnsparse")


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
    return Start(init=load_init(init_path), init_path=init_path)
