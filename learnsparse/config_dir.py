"""Where the Hydra configs live and how tests and tools compose them."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def config_dir() -> Path:
    """`$LEARNSPARSE_CONFIG_DIR` if set, else the checkout's top-level `configs/`."""
    env = os.environ.get("LEARNSPARSE_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "configs"
    if not (path / "train.yaml").is_file():
        raise UserError(f"no train.yaml in {path}; set LEARNSPARSE_CONFIG_DIR to the learnsparse configs folder")
    return path


def compose(overrides: list[str] | None = None, config_name: str = "train"):
    """Compose the real configs outside a Hydra app (tests, notebooks, pre-flight checks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
