"""SIGTERM / SIGUSR1 (what SLURM sends before it kills a job): the run finishes its step,
writes last.pt, exits with EXIT_PREEMPTED, optionally requeues itself, and resumes exactly."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.engine.preemption import EXIT_PREEMPTED

from .conftest import TINY
from .resume_checks import assert_same_training, run_train

# CondenseNet's schedule, 3 steps per epoch, 4 epochs (see test_step_checkpoints.py).
RUN = ["model=condensenet_mini", "data.in_channels=1", "sparsity=condensenet",
       "sparsity.condensenet.trainable_form=deployed", "data.dataset.image_size=16", "trainer.epochs=4",
       "data.dataset.train_size=96", "data.num_workers=2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    proc = run_train(*RUN, f"hydra.run.dir={folder}", f"paths.log_dir={folder}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_checkpoint(folder / "checkpoints/last.pt")


def test_exit_status_is_documented():
    assert EXIT_PREEMPTED == 75  # docs/trainer.md, "Preemption" (sysexits.h EX_TEMPFAIL)


@pytest.mark.parametrize("signame,step", [("SIGTERM", 4), ("SIGUSR1", 8)])
def test_signal_mid_epoch_writes_a_checkpoint_exits_and_resumes_exactly(signame, step, tmp_path, uninterrupted):
    common = [*RUN, f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run"]
    stopped = run_train(*common, "+callbacks.stop._target_=tests.preempt_helpers.SignalAtStep",
                        f"+callbacks.stop.step={step}", f"+callbacks.stop.signal={signame}")
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert f"stopped by {signame} after step {step}; checkpoint written" in stopped.stdout + stopped.stderr
    # No step checkpoints were asked for: the signal alone wrote this one, after the step it came in.
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert ckpt["iter"] == step and ckpt["epoch_step"] == step % 3
    resumed = run_train(*common, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(uninterrupted, load_checkpoint(tmp_path / "run/checkpoints/last.pt"))


def test_signal_at_an_epochs_last_step_stops_after_the_epoch(tmp_path, uninterrupted):
    common = [*RUN, f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run"]
    stopped = run_train(*common, "+callbacks.stop._target_=tests.preempt_helpers.SignalAtStep",
                        "+callbacks.stop.step=6")
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert ckpt["iter"] == 6 and ckpt["epoch"] == 1 and len(ckpt["history"]) == 2  # evaluated, then stopped
    resumed = run_train(*common, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(uninterrupted, load_checkpoint(tmp_path / "run/checkpoints/last.pt"))


def test_a_second_signal_during_the_save_does_not_corrupt_last_pt(tmp_path, uninterrupted):
    common = [*RUN, f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run"]
    stopped = run_train(*common, "+callbacks.stop._target_=tests.preempt_helpers.SignalDuringSave",
                        "+callbacks.stop.step=5")
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert "received again" in stopped.stdout + stopped.stderr
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert ckpt["iter"] == 5
    resumed = run_train(*common, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(uninterrupted, load_checkpoint(tmp_path / "run/checkpoints/last.pt"))


@pytest.mark.slow  # the signal tests above cover mid-epoch and epoch-end; this one, any moment
def test_sigterm_from_outside_at_a_random_moment(tmp_path, uninterrupted):
    common = [*RUN, f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run"]
    proc = run_train(*common, wait=False)
    deadline = time.monotonic() + 240
    # Once training has started (the first epoch's checkpoint, or a little before it).
    while proc.poll() is None and time.monotonic() < deadline and \
            not (tmp_path / "run/checkpoints/last.pt").exists():
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, EXIT_PREEMPTED), err[-3000:]
    resumed = run_train(*common, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(uninterrupted, load_checkpoint(tmp_path / "run/checkpoints/last.pt"))


def test_requeue_under_slurm_runs_scontrol(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    env = {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    args = ["model=lenet5", "data.in_channels=1", "data.dataset.train_size=96", "trainer.epochs=2",
            "+callbacks.stop._target_=tests.preempt_helpers.SignalAtStep", "+callbacks.stop.step=1"]
    asked = run_train(*args, "trainer.requeue_on_preempt=true", f"hydra.run.dir={tmp_path}/a", env=env)
    assert asked.returncode == EXIT_PREEMPTED, asked.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    calls.unlink()
    not_asked = run_train(*args, f"hydra.run.dir={tmp_path}/b", env=env)  # the default: no requeue
    assert not_asked.returncode == EXIT_PREEMPTED and not calls.exists()


def test_under_torchrun_a_signal_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           "-m", "learnsparse.cli", *TINY, "model=lenet5", "data.in_channels=1", "trainer.epochs=2",
           "data.dataset.train_size=256", "trainer.checkpoint.every_steps=100", f"hydra.run.dir={tmp_path}/run",
           "+callbacks.stop._target_=tests.preempt_helpers.SignalAtStep", "+callbacks.stop.step=2",
           "+callbacks.stop.rank=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    # torchrun reports a worker's non-zero status as its own failure; the workers' is 75.
    assert proc.returncode != 0 and re.search(r"exitcode\s*:\s*75", output), output[-3000:]
    # Both ranks stopped after step 2 (each says so: warnings come from every rank), though
    # only rank 1 was signalled; rank 0 wrote the checkpoint of that step.
    assert output.count("stopped by SIGTERM after step 2; checkpoint written") == 1, output[-3000:]
    assert output.count("stopped by a signal to another rank after step 2; checkpoint written") == 1
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    # 256 images, batch 32, 2 ranks: 4 steps per epoch; step 2 is the middle of the first.
    assert ckpt["iter"] == 2 and ckpt["epoch"] == 0 and ckpt["epoch_step"] == 2
    assert ckpt["sampler"] == {"epoch": 0, "position": 64, "size": 128}  # this rank's half
