"""Bitwise comparison of two runs' final checkpoints: weights, optimizer, plugin state."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from .conftest import TINY


def assert_same_state(a, b, where: str = "") -> None:
    """Equal values, tensors bitwise (dtype, shape and every bit), in nested dicts and lists."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_same_training(a: dict, b: dict) -> None:
    """Two final checkpoints: the same weights, optimizer state, LR schedule, AMP scaler,
    sparsity plugins' state and record (the epoch metrics are not compared: the resumed
    epoch's timing and training averages cover only the steps that ran in that process)."""
    assert a["iter"] == b["iter"] and a["epoch"] == b["epoch"]
    for key in ("model", "optimizer", "lr_scheduler", "scaler"):
        assert_same_state(a[key], b[key], key)
    plugins = set(a["config"].get("sparsity") or {})
    assert plugins <= set(a["hooks"]), (plugins, sorted(a["hooks"]))
    for name in plugins:
        assert_same_state(a["hooks"][name], b["hooks"][name], f"hooks.{name}")
    assert_same_state(a.get("record"), b.get("record"), "record")


def run_train(*args: str, env: dict | None = None, timeout: int = 300, wait: bool = True):
    """The training command in a subprocess, with the tiny CPU overrides and extra environment."""
    code = "from learnsparse.cli import train_main; train_main()"
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    cmd = [sys.executable, "-c", code, *TINY, *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                                stdin=subprocess.DEVNULL)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                          stdin=subprocess.DEVNULL)
