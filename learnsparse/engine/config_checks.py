"""Checks on a composed config, before anything is built or written. Each failure is one line."""
from __future__ import annotations

from omegaconf import DictConfig

from learnsparse.core.errors import UserError, find_cause


def _resolves(cfg: DictConfig) -> None:
    """Every interpolation resolves: a recipe's `${required:...}` keys are set, paths exist as
    strings. Run-time-only values (Hydra's own) are left to the run."""
    from omegaconf import OmegaConf

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        cause = find_cause(e)
        if isinstance(cause, UserError):
            raise cause from None
        if "HydraConfig was not set" not in str(e):
            raise UserError(f"config: {str(e).splitlines()[0]}") from e


def _positive(cfg: DictConfig, key: str, *, allow_zero: bool = False) -> None:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UserError(f"{key} must be a number (got {value!r})")
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{key} must be {'≥ 0' if allow_zero else '> 0'} (got {value})")


def check_config(cfg: DictConfig) -> None:
    _resolves(cfg)
    for key in ("trainer.epochs", "data.batch_size", "optim.lr"):
        _positive(cfg, key)
    for key in ("data.num_workers", "optim.weight_decay", "optim.momentum", "trainer.grad_clip"):
        _positive(cfg, key, allow_zero=True)
    if not float(cfg.trainer.epochs).is_integer():
        raise UserError(f"trainer.epochs must be a whole number (got {cfg.trainer.epochs})")
    if cfg.trainer.get("amp") not in (None, "bf16", "fp16"):
        raise UserError(f"trainer.amp must be null, bf16 or fp16 (got {cfg.trainer.amp!r})")
    device = str(cfg.trainer.get("device", "auto"))
    if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"trainer.device must be auto, cpu, cuda or cuda:N (got {device!r})")
