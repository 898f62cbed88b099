"""Run the real console command in a subprocess, as a user would."""
import os
import subprocess
import sys

from .conftest import TINY


def run_cli(*args: str, tiny: bool = True, timeout: int = 300, entry: str = "train_main") -> subprocess.CompletedProcess:
    code = f"from learnsparse.cli import {entry}; {entry}()"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags go before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.run([sys.executable, "-c", code, *flags, *(TINY if tiny else []), *overrides], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
