"""Find the checkpoint `trainer.resume` points at: a path, or `auto`."""
from __future__ import annotations

from pathlib import Path

from learnsparse.errors import UserError


def find_resume_checkpoint(resume: str | None, output_dir: Path, experiment_dir: Path | None) -> Path | None:
    """`auto`: this run's last.pt if it has one, else the newest last.pt among earlier runs of
    the same experiment (its sibling output folders); None when there is nothing to resume."""
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume).expanduser()
        if not path.is_file():
            raise UserError(f"trainer.resume={resume}: no such checkpoint file")
        return path
    own = output_dir / "checkpoints" / "last.pt"
    if own.is_file():
        return own
    if experiment_dir is None or not experiment_dir.is_dir():
        return None
    found = sorted(experiment_dir.glob("*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
