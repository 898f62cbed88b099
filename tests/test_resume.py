"""A run killed with SIGKILL mid-epoch and resumed ends with the uninterrupted run's weights."""
import signal

import pytest
import torch

from learnsparse.engine.checkpoint_io import load_checkpoint

from .cli_runner import run_cli

COMMON = ["model=lenet5", "data.dataset.image_size=28", "trainer.epochs=3", "data.dataset.train_size=96"]


@pytest.mark.parametrize("workers", [0, 2])
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
