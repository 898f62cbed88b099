"""Everything that can fail before training starts, checked before Hydra makes a run folder.

The config's values, the device, the data, the checkpoints to resume or start from, the
model and every plugin on it (built for real, so a plugin refusing its arguments or this
model says so here), the loggers and callbacks. A failed start then costs one line and
leaves nothing behind. The data bundle is handed to the run, so it is read once.
"""
from __future__ import annotations

from omegaconf import DictConfig

from learnsparse.errors import UserError, first_line


def preflight(cfg: DictConfig) -> None:
    from .config_checks import check_config
    from .devices import select_device
    from .run import build_data, build_model_and_plugins, build_node, find_start, keep_for_the_run, named_hook
    from .trainer import check_distinct

    check_config(cfg)
    select_device(str(cfg.trainer.get("device", "auto")))
    bundle = build_data(cfg)
    start = find_start(cfg)
    model, hooks = build_model_and_plugins(cfg, start)
    if start.resume is not None:
        try:
            model.load_state_dict(start.resume["model"])
        except (RuntimeError, KeyError) as e:
            raise UserError(f"checkpoint {start.resume_path} does not fit this config ({first_line(e)})") from e
    for group in ("logger", "callbacks"):
        hooks += [named_hook(build_node(node, f"{group}.{name}"), name)
                  for name, node in (cfg.get(group) or {}).items()]
    try:
        check_distinct(hooks)
    except ValueError as e:
        raise UserError(first_line(e, limit=None)) from e
    keep_for_the_run(cfg, bundle)
