"""Everything that can fail before training starts, checked before Hydra makes a run folder.

The config's values, the device, the data, the checkpoints to resume or start from, the
model and every plugin on it (built for real, so a plugin refusing its arguments or this
model says so here), the loggers and callbacks. A failed start then costs one line and
leaves nothing behind. The data bundle is handed to the run, so it is read once.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from learnsparse.errors import UserError, first_line


def preflight(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    from .checkpoint_io import load_checkpoint
    from .config_checks import check_config
    from .devices import select_device
    from .run import (named_hook, build_data, build_model, build_plugins, checkpoint_to_resume, find_cause,
                      init_weights, keep_for_the_run)
    from .trainer import check_distinct

    check_config(cfg)
    select_device(str(cfg.trainer.get("device", "auto")))
    bundle = build_data(cfg)
    resume_path, resume_ckpt = checkpoint_to_resume(cfg)
    init_path = Path(str(cfg.trainer.init_from)) if cfg.trainer.get("init_from") and resume_ckpt is None else None
    init_ckpt = load_checkpoint(init_path) if init_path is not None else None
    model = build_model(cfg, resume_ckpt or init_ckpt,
                        f"checkpoint {resume_path}" if resume_ckpt else f"trainer.init_from={init_path}")
    if init_ckpt is not None:
        init_weights(model, init_ckpt, init_path)
    hooks = build_plugins(cfg, model)
    if resume_ckpt is not None:
        try:
            model.load_state_dict(resume_ckpt["model"])
        except (RuntimeError, KeyError) as e:
            raise UserError(f"checkpoint {resume_path} does not fit this config ({first_line(e)})") from e
    for group in ("logger", "callbacks"):
        for name, node in (cfg.get(group) or {}).items():
            try:
                hook = instantiate(node)
            except Exception as e:
                cause = find_cause(e)
                if isinstance(cause, UserError):
                    raise cause from e
                raise UserError(f"cannot build {group}.{name}: {first_line(cause, limit=None)}") from e
            hooks.append(named_hook(hook, name))
    try:
        check_distinct(hooks)
    except ValueError as e:
        raise UserError(first_line(e, limit=None)) from e
    keep_for_the_run(cfg, bundle)
