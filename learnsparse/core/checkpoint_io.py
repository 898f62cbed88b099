"""Atomic checkpoint writes and safe reads.

A checkpoint is written to a temporary file beside its target, flushed to disk, then
renamed over it: a crash at any moment leaves either the old file or the new one, never a
torn one. Reads use `weights_only=True`, so a checkpoint cannot run code when loaded.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from learnsparse.core.errors import UserError, first_line


def save_atomic(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself must reach the disk too, or a power cut could undo it.
    _fsync_dir(path.parent)


def link_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make `path` another name of the (complete) file `source`, atomically: a hard link
    renamed over `path` (no second write of the checkpoint); a copy where links fail."""
    source, path = Path(source), Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_weights_only(path: str | os.PathLike, what: str, map_location="cpu"):
    """torch.load with weights_only=True; a missing, torn or foreign file is one UserError line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds for a torn or foreign file
        raise UserError(f"{what} {path} is unreadable or truncated ({first_line(e)})") from e


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    ckpt = read_weights_only(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"checkpoint {path} is not a learnsparse checkpoint (no 'model' entry)")
    return ckpt


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": list(_tuplify(random.getstate())),
        "numpy": _numpy_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_untuplify(state["python"]))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> list:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


def _tuplify(x):
    return [_tuplify(v) for v in x] if isinstance(x, (tuple, list)) else x


def _untuplify(x):
    return tuple(_untuplify(v) for v in x) if isinstance(x, list) else x
