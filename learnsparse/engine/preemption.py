"""Preemption: SIGTERM or SIGUSR1 ends a run cleanly at the next step boundary.

SLURM sends SIGTERM before it kills a preempted or timed-out job (and SIGUSR1 ahead of time
with `--signal=USR1@<seconds>`). The handler only raises a flag; the trainer finishes the
step it is in, writes `last.pt` (every rank agrees on the step, rank 0 writes), optionally
requeues the job (`scontrol requeue $SLURM_JOB_ID`, as Lightning's SLURM plugin does) and
exits with EXIT_PREEMPTED. A second signal while the checkpoint is written only raises the
flag again: the save is never interrupted, and a SIGKILL at that moment still leaves the old
`last.pt` or the new one whole (checkpoint_io.save_atomic).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading

log = logging.getLogger("learnsparse")

# sysexits.h EX_TEMPFAIL, "temporary failure; the user is invited to retry": the run stopped
# at a checkpoint and `trainer.resume=auto` continues it.
EXIT_PREEMPTED = 75
SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class Preempted(SystemExit):
    """Raised by the trainer after the checkpoint is written; its exit status is EXIT_PREEMPTED."""

    def __init__(self, signame: str, step: int):
        super().__init__(EXIT_PREEMPTED)
        self.signame, self.step = signame, step

    def __str__(self) -> str:
        return f"stopped by {self.signame} after step {self.step}; checkpoint written"


class PreemptionHandler:
    """Catches SIGTERM/SIGUSR1 while installed (the trainer's `train()`), as a flag."""

    def __init__(self):
        self.signame: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signame is not None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signame is None:
            self.signame = name
            log.warning("%s received: finishing this step, then writing a checkpoint", name)
        else:
            log.warning("%s received again: the checkpoint is being written, then the run stops", name)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only: a trainer run from another thread has no handler
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)

    def uninstall(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()


def requeue_slurm_job() -> bool:
    """`scontrol requeue $SLURM_JOB_ID`; False (with a warning) where that cannot be done."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    if shutil.which("scontrol") is None:
        log.warning("trainer.requeue_on_preempt: scontrol is not on PATH; job %s is not requeued", job)
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (%s)", job, (result.stderr or result.stdout).strip())
        return False
    log.info("requeued SLURM job %s", job)
    return True
