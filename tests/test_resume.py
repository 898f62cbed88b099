"""A run killed with SIGKILL mid-epoch and resumed ends with the uninterrupted run's weights,
for the plain loop and for each method's defaults (nothing pinned)."""
import contextlib
import random
import signal
import subprocess
import sys

import pytest
import torch

from learnsparse.core.checkpoint_io import load_checkpoint

from .cli_runner import run_cli

COMMON = ["model=lenet5", "data.dataset.image_size=28", "trainer.epochs=3", "data.dataset.train_size=96"]


# Without workers: under -m slow (test_data checks a 0-worker run against a 2-worker one across a resume).
@pytest.mark.parametrize("workers", [pytest.param(0, marks=pytest.mark.slow), 2])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, workers):
    common = [*COMMON, f"data.num_workers={workers}", f"paths.log_dir={tmp_path}"]
    full = run_cli(*common, f"hydra.run.dir={tmp_path}/full")
    assert full.returncode == 0, full.stderr

    # 3 steps per epoch: step 4 is in the middle of epoch 2 (index 1).
    killed = run_cli(*common, f"hydra.run.dir={tmp_path}/crash", "+callbacks.kill._target_=tests.helpers.KillAtStep",
                     "+callbacks.kill.step=4")
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "crash/checkpoints/last.pt")["epoch"] == 0

    resumed = run_cli(*common, f"hydra.run.dir={tmp_path}/crash", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr

    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "crash/checkpoints/last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["iter"] == b["iter"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def test_resume_auto_finds_the_newest_run_of_the_experiment(tmp_path):
    common = [*COMMON, "trainer.epochs=1", f"paths.log_dir={tmp_path}", "task_name=exp"]
    first = run_cli(*common, f"hydra.run.dir={tmp_path}/exp/first")
    assert first.returncode == 0, first.stderr
    second = run_cli(*[c for c in common if not c.startswith("trainer.epochs")], "trainer.epochs=2",
                     f"hydra.run.dir={tmp_path}/exp/second", "trainer.resume=auto")
    assert second.returncode == 0, second.stderr
    ckpt = load_checkpoint(tmp_path / "exp/second/checkpoints/last.pt")
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 2


# Each shipped experiment's method with its defaults (nothing pinned), on a small model:
# CondenseNet's in-training swap (trainable_form: rule), FLGC's, and SSL + threshold with its
# in-training shrink. 96 images, batch 32, 4 epochs: 3 steps an epoch, every structure final at step 6.
DEFAULT_METHODS = {
    "condensenet": ["model=condensenet_mini", "data.in_channels=1", "sparsity=condensenet"],
    "flgc": ["model=resnet20", "sparsity=flgc"],
    "ssl_threshold_shrink": ["model=resnet20", "sparsity=[ssl_filter_channel,threshold]",
                             "sparsity.threshold.rule=percentile", "sparsity.threshold.tau=0.3"],
}


# CondenseNet's kill is covered in make test by test_condense_in_training's kill after the swap
# and test_step_checkpoints' mid-epoch kill: under -m slow here.
@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "condensenet" else m
                                    for m in sorted(DEFAULT_METHODS)])
def test_defaults_killed_at_a_random_step_with_workers_resume_bit_exactly(method, tmp_path):
    kill_at = random.Random(method).randrange(1, 12)  # a moment drawn per method, the same every run
    common = [*DEFAULT_METHODS[method], "data.dataset.image_size=16", "trainer.epochs=4", "data.dataset.train_size=96",
              "data.num_workers=2", f"paths.log_dir={tmp_path}"]
    full = run_cli(*common, f"hydra.run.dir={tmp_path}/full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run_cli(*common, f"hydra.run.dir={tmp_path}/crash", "+callbacks.kill._target_=tests.helpers.KillAtStep",
                     f"+callbacks.kill.step={kill_at}")
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(*common, f"hydra.run.dir={tmp_path}/crash", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "crash/checkpoints/last.pt")
    assert a["iter"] == b["iter"] == 12
    assert [(e["op"], e.get("layers")) for e in a["record"]["edits"]] == \
        [(e["op"], e.get("layers")) for e in b["record"]["edits"]]
    assert a["record"]["edits"][-1]["op"] in ("condense_in_training", "shrink_in_training")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@contextlib.contextmanager
def busy_cpu(processes: int = 2):
    """Other processes spinning on every core, as on a shared machine."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


# Every shipped experiment's method (quickstart and condensenet*: condensenet; flgc*; slimming:
# bn_slimming + threshold; ssl_*: ssl_filter_channel / ssl_depth + threshold), defaults only.
EXPERIMENT_METHODS = {
    **DEFAULT_METHODS,
    "slimming": ["model=resnet20", "sparsity=[bn_slimming,threshold]", "sparsity.threshold.layers=batchnorm",
                 "sparsity.threshold.rule=percentile", "sparsity.threshold.tau=0.3"],
    "ssl_depth": ["model=resnet20", "sparsity=[ssl_depth,threshold]"],
}


@pytest.mark.parametrize("method", sorted(EXPERIMENT_METHODS))
def test_two_fresh_default_runs_one_under_load_end_bitwise_equal(method, tiny_cfg, tmp_path):
    """No default depends on timing: a run on an idle machine and one on a busy one give the
    same network, bit for bit."""
    from learnsparse import train

    args = [*EXPERIMENT_METHODS[method], "trainer.epochs=2", "data.dataset.train_size=64"]
    train(tiny_cfg(*args, f"paths.output_dir={tmp_path}/idle"))
    with busy_cpu():
        train(tiny_cfg(*args, f"paths.output_dir={tmp_path}/busy"))
    a = load_checkpoint(tmp_path / "idle/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "busy/checkpoints/last.pt")
    assert [(e["op"], e.get("layers")) for e in a["record"]["edits"]] == \
        [(e["op"], e.get("layers")) for e in b["record"]["edits"]]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
