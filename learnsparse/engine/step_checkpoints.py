"""Step checkpoints on disk: `step-<iter>.pt` files beside `last.pt`, the newest K kept.

A step checkpoint is written once, atomically, as `step-<iter>.pt`; `last.pt` then becomes a
second name of it (checkpoint_io.link_atomic: a hard link, no second write). Pruning removes
older step files only, never `last.pt`, which stays whole under its own name. Resume takes
the *valid* checkpoint with the most steps done (`newest_valid`): a torn or foreign file —
a full disk, a copy cut short — is passed over, not loaded.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

_STEP_FILE = re.compile(r"step-(\d+)\.pt")


def step_file(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:09d}.pt"


def step_files(directory: Path) -> list[Path]:
    """This folder's step checkpoints, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob("step-*.pt") if (m := _STEP_FILE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def prune(directory: Path, keep: int) -> None:
    for path in step_files(directory)[:-keep] if keep > 0 else step_files(directory):
        path.unlink(missing_ok=True)


def position(path: Path) -> tuple[int, int] | None:
    """(steps done, 1 for last.pt) of a readable learnsparse checkpoint; None when it is not one."""
    try:
        # mmap: the pickle is read and the archive checked, the tensors are not loaded.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "iter" not in ckpt:
        return None
    return int(ckpt["iter"]), int(path.name == "last.pt")


def newest_valid(directory: Path) -> Path | None:
    """The readable checkpoint of `directory` with the most steps done (last.pt on a tie)."""
    candidates = [Path(directory) / "last.pt", *step_files(directory)]
    scored = [(pos, p) for p in candidates if p.is_file() and (pos := position(p)) is not None]
    return max(scored, key=lambda t: t[0])[1] if scored else None


def step_options(node) -> dict:
    """`trainer.checkpoint` as CheckpointHook's keywords; a bad value is one UserError line."""
    from learnsparse.core.errors import UserError

    node = dict(node or {})
    unknown = sorted(set(node) - {"every_steps", "every_minutes", "keep"})
    if unknown:
        raise UserError(f"trainer.checkpoint: unknown key(s) {unknown}; it takes every_steps, every_minutes, keep")
    steps, minutes, keep = node.get("every_steps"), node.get("every_minutes"), node.get("keep", 1)
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise UserError(f"trainer.checkpoint.every_steps must be a whole number ≥ 1 or null (got {steps!r})")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
        raise UserError(f"trainer.checkpoint.every_minutes must be a number > 0 or null (got {minutes!r})")
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise UserError(f"trainer.checkpoint.keep must be a whole number ≥ 1 (got {keep!r})")
    return {"every_steps": steps, "every_minutes": minutes, "keep": keep}
