"""Find the checkpoint `trainer.resume` points at: a path, or `auto`."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from learnsparse.core.errors import UserError
from learnsparse.core.plugins import with_current_targets

from .step_checkpoints import newest_valid

log = logging.getLogger("learnsparse")

# Keys that say where and how fast a run goes, not what it computes: a run that differs from
# another only in these is the same run, and `auto` may continue it. `trainer.epochs` is one:
# asking for more epochs continues a run (the usual way to train longer).
_RUN_ONLY_KEYS = {
    "paths", "hydra", "logger", "callbacks", "task_name", "trainer.epochs",
    "trainer.resume", "trainer.device", "trainer.checkpoint", "trainer.requeue_on_preempt",
    "data.num_workers", "data.pin_memory", "data.eval_batch_size",
    "data.persistent_workers", "data.prefetch_factor",
    "data.root", "data.dataset.root", "data.dataset.download",
}


def training_identity(config: dict) -> dict:
    """The part of a resolved config that decides the weights a run ends with."""

    def strip(node, prefix=""):
        if not isinstance(node, dict):
            return node
        return {k: strip(v, f"{prefix}{k}.") for k, v in node.items() if f"{prefix}{k}" not in _RUN_ONLY_KEYS}

    return strip(with_current_targets(config or {}))


def _config_of(path: Path) -> dict | None:
    try:
        # mmap: only the small config is read, not the weights.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return ckpt.get("config") if isinstance(ckpt, dict) else None


def find_resume_checkpoint(resume: str | None, output_dir: Path, experiment_dir: Path | None,
                           config: dict | None = None) -> Path | None:
    """`auto`: this run's newest valid checkpoint (last.pt or a step checkpoint, the one with
    the most steps done that reads whole: step_checkpoints.newest_valid) if it has one, else
    that of the newest earlier run of the same experiment (its sibling output folders and
    sweep jobs) whose configuration is this one's (up to paths, device and loader settings);
    None when there is nothing to resume."""
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume).expanduser()
        if not path.is_file():
            raise UserError(f"trainer.resume={resume}: no such checkpoint file")
        return path
    own = newest_valid(output_dir / "checkpoints")
    if own is not None:
        return own
    if experiment_dir is None or not experiment_dir.is_dir():
        return None
    # Single runs are <experiment>/<time>/, sweep jobs <experiment>/multirun_<time>/<job>/: a job
    # of a resubmitted sweep finds the same job (same overrides, so same identity) of the last one.
    files = [p for pattern in ("*/checkpoints/*.pt", "*/*/checkpoints/*.pt") for p in experiment_dir.glob(pattern)
             if p.name == "last.pt" or p.name.startswith("step-")]
    newest: dict[Path, float] = {}
    for p in files:
        newest[p.parent] = max(newest.get(p.parent, 0.0), p.stat().st_mtime)
    found = [path for folder in sorted(newest, key=newest.get, reverse=True)
             if (path := newest_valid(folder)) is not None]
    if config is None:
        return found[0] if found else None
    wanted = training_identity(config)
    for path in found:
        if training_identity(_config_of(path)) == wanted:
            return path
    if found:
        log.info("trainer.resume=auto: no earlier run of %s has this configuration; starting fresh", experiment_dir)
    return None
