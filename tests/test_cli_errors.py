"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing overwritten."""
import pytest

from .cli_runner import run_cli


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.mark.parametrize("override, fragments", [
    ("model=no_such_model", ["model/no_such_model", "resnet20"]),
    ("optim=lion", ["optim/lion"]),
    ("optim.lr=-0.1", ["optim.lr", "> 0"]),
    ("trainer.epochs=0", ["trainer.epochs"]),
    ("data.batch_size=0", ["data.batch_size"]),
    ("trainer.amp=fp8", ["trainer.amp"]),
    ("trainer.epochs=abc", ["trainer.epochs"]),
    ("model.num_classes=5", ["num_classes=5", "10 classes"]),
    ("model.name=resnet2", ["unknown model 'resnet2'"]),
    ("trainer.resume=/no/such/file.pt", ["/no/such/file.pt"]),
    ("trainer.init_from=/no/such/dense.pt", ["/no/such/dense.pt"]),
    ("sparsity=group_lasso sparsity.group_lasso.mode=newton", ["mode", "newton"]),
    ("sparsity=group_lasso sparsity.group_lasso.kinds=[rows]", ["rows"]),
    ("sparsity=threshold sparsity.threshold.rule=median", ["rule", "median"]),
    ("sparsity=ssl_depth", ["ssl_depth", "residual"]),
])
def test_bad_values_fail_with_one_line(tmp_path, override, fragments):
    proc = run_cli(*override.split(), f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run")
    assert_one_line_error(proc, *fragments)


def test_missing_dataset_names_the_path(tmp_path, monkeypatch):
    proc = run_cli("data=cifar10", f"paths.data_dir={tmp_path}/nothing", f"hydra.run.dir={tmp_path}/run", tiny=False)
    assert_one_line_error(proc, f"{tmp_path}/nothing", "download=true")


@pytest.fixture(scope="module")
def lenet_checkpoint(tmp_path_factory) -> bytes:
    from learnsparse import train
    from learnsparse.core.config_dir import compose

    from .conftest import TINY

    out = tmp_path_factory.mktemp("lenet")
    train(compose([*TINY, "model=lenet5", "data.dataset.image_size=28", "trainer.epochs=1",
                   f"paths.output_dir={out}"]))
    return (out / "checkpoints" / "last.pt").read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_is_refused_and_left_alone(tmp_path, lenet_checkpoint, damage):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    data = lenet_checkpoint
    bad = {"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage]
    last.write_bytes(bad)
    # Named explicitly: `auto` passes over a checkpoint that does not read whole (it takes the
    # newest valid one, test_step_checkpoints.py); a file the user names is refused.
    proc = run_cli("model=lenet5", "data.dataset.image_size=28", "trainer.epochs=2", f"hydra.run.dir={run}",
                   f"trainer.resume={last}")
    assert_one_line_error(proc, str(last))
    assert last.read_bytes() == bad


def test_checkpoint_of_another_model_is_refused(tmp_path, lenet_checkpoint):
    ckpt = tmp_path / "lenet.pt"
    ckpt.write_bytes(lenet_checkpoint)
    proc = run_cli("model=resnet20", "trainer.epochs=2", f"trainer.resume={ckpt}", f"hydra.run.dir={tmp_path}/other")
    assert_one_line_error(proc, "does not fit this config")
    assert ckpt.read_bytes() == lenet_checkpoint


def test_success_prints_accuracy_and_output_folder(tmp_path):
    proc = run_cli("model=lenet5", "data.dataset.image_size=28", "trainer.epochs=1", f"hydra.run.dir={tmp_path}/ok")
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy: top-1" in proc.stdout
    assert f"outputs: {tmp_path}/ok" in proc.stdout


def test_multirun_runs_every_job(tmp_path):
    proc = run_cli("-m", "model=lenet5", "data.dataset.image_size=28", "trainer.epochs=1", "seed=1,2",
                   f"paths.log_dir={tmp_path}", "task_name=sweep")
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(tmp_path.glob("sweep/multirun_*/*/checkpoints/last.pt"))
    assert len(jobs) == 2
