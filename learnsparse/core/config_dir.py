"""Where the Hydra configs live and how tests, notebooks and tools compose them.

The configs ship inside the package (`learnsparse/configs`, found as `pkg://learnsparse.configs`),
so an installed wheel runs from any folder. Users add folders of their own with Hydra's
`--config-dir DIR` or `hydra.searchpath=[file://DIR]`; `compose(..., config_dirs=[DIR])` does
the same from Python.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf, open_dict

from .errors import UserError

CONFIG_MODULE = "learnsparse.configs"


def config_dir() -> Path:
    """The folder of the shipped configs (read-only for users: add yours with --config-dir)."""
    return Path(__file__).resolve().parent.parent / "configs"


def _required(key: str, what: str = "a value") -> str:
    """`${required:trainer.init_from,<what>}` in a recipe: the user must set `key`. OmegaConf's
    `???` cannot say this, because merging `???` over a default keeps the default."""
    raise UserError(f"{key} is required by this experiment: set {key}=<{what}>")


if not OmegaConf.has_resolver("required"):
    OmegaConf.register_new_resolver("required", _required)


def searchpath_override(config_dirs) -> list[str]:
    """The override that adds user config folders to Hydra's search path."""
    dirs = [str(Path(d).expanduser().resolve()) for d in config_dirs or []]
    return [f"hydra.searchpath=[{','.join('file://' + d for d in dirs)}]"] if dirs else []


def compose(overrides: list[str] | None = None, config_name: str = "train", config_dirs=None):
    """Compose the real configs outside a Hydra app.

    `paths.output_dir` is the run folder Hydra would have made (`hydra.run.dir`), unless the
    overrides set it. Hydra's global state is left as it was found.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = [*searchpath_override(config_dirs), *(overrides or [])]
    instance = GlobalHydra.instance()
    previous = instance.hydra if instance.is_initialized() else None
    instance.clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    finally:
        if previous is not None:
            GlobalHydra.instance().initialize(previous)
    with open_dict(cfg):
        run_dir = OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=False)
        paths = cfg.get("paths")
        if paths is not None and OmegaConf.is_interpolation(paths, "output_dir") and \
                "hydra:" in str(OmegaConf.to_container(paths)["output_dir"]):
            paths.output_dir = run_dir
        del cfg["hydra"]
    return cfg
