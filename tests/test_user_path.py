"""What a new user meets when following the docs literally: keys, messages, files, layouts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from learnsparse.core.errors import UserError

from .cli_runner import run_cli
from .conftest import TINY
from .test_cli_errors import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]


# --- config keys and messages -------------------------------------------------------------

@pytest.mark.parametrize("data, folder", [("cifar10", "cifar-10-batches-py/"), ("imagenet", "train/ and val/")])
def test_data_root_is_the_key_the_docs_use(tmp_path, data, folder):
    from learnsparse.core.config_dir import compose

    cfg = compose([f"data={data}", f"data.root={tmp_path}/sets", "model=resnet20"])
    assert cfg.data.dataset.root == f"{tmp_path}/sets"
    proc = run_cli(f"data={data}", f"data.root={tmp_path}/nothing", "model=resnet20", f"hydra.run.dir={tmp_path}/run",
                   tiny=False)
    assert_one_line_error(proc, f"{tmp_path}/nothing", "data.root=<folder that holds", folder)


def test_offline_download_says_the_download_failed(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    from learnsparse.data import cifar10

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(UserError, match=r"download into .* failed \(<urlopen error \[Errno -3\]"):
        cifar10(str(tmp_path), download=True)


def test_required_recipe_input_is_required(tmp_path):
    proc = run_cli("experiment=ssl_lenet5_fashion_mnist", f"paths.log_dir={tmp_path}", tiny=False)
    assert_one_line_error(proc, "trainer.init_from is required by this experiment", "trainer.init_from=<")
    assert not any(tmp_path.iterdir())  # refused before Hydra made a run folder


@pytest.mark.parametrize("entry, args, fragments", [
    ("train_main", ["trainer.epoch=1"], ["no config key 'trainer.epoch'", "did you mean trainer.epochs?"]),
    ("train_main", ["model=resnet2"], ["no option 'resnet2' in group model", "resnet20"]),
    ("export_main", ["checkpoint=x.pt", "rtl=1e-6"], ["no config key 'rtl'", "did you mean rtol?"]),
])
def test_typos_get_the_reason_and_the_nearest_name(tmp_path, entry, args, fragments):
    proc = run_cli(*args, f"paths.log_dir={tmp_path}", tiny=False, entry=entry) if entry == "train_main" \
        else run_cli(*args, tiny=False, entry=entry)
    assert_one_line_error(proc, *fragments)
    assert "Config search path" not in proc.stderr and "provider=" not in proc.stderr


def test_a_sweep_is_checked_before_it_starts(tmp_path):
    proc = run_cli("-m", "seed=0,1", "trainer.epoch=1", f"paths.log_dir={tmp_path}")
    assert_one_line_error(proc, "did you mean trainer.epochs?")


def test_help_names_the_commands_and_their_keys():
    train_help = run_cli("--help", tiny=False)
    assert train_help.returncode == 0
    assert "learnsparse-train" in train_help.stdout and "powered by Hydra" not in train_help.stdout
    export_help = run_cli("--help", tiny=False, entry="export_main")
    assert export_help.returncode == 0
    for key in ("checkpoint", "formats", "rtol", "latency_batch", "channels_last"):
        assert f"\n{key}:" in export_help.stdout


# --- one option moves a whole run; resume only what matches ------------------------------

def test_output_dir_holds_the_whole_run_and_its_log(tmp_path):
    proc = run_cli("model=lenet5", "data.dataset.image_size=28", "trainer.epochs=1", f"paths.log_dir={tmp_path}/logs",
                   f"paths.output_dir={tmp_path}/runs/dense")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "dense"
    for name in (".hydra/config.yaml", "train.log", "checkpoints/last.pt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert "epoch 1/1" in (run / "train.log").read_text()
    assert not (tmp_path / "logs").exists()  # nothing went to the default place


def test_the_command_builds_its_run_once_and_logs_the_build(tmp_path):
    """The run the command builds to check it, before Hydra makes the folder, is the run
    Hydra's task trains: a callback of the config is made once (not again for training), and
    what the build logged ("resumed from ...") reaches the run's train.log."""
    builds = tmp_path / "builds.txt"
    common = ["model=lenet5", "data.dataset.image_size=28", f"paths.log_dir={tmp_path}",
              "+callbacks.count._target_=tests.helpers.CountBuilds", f"+callbacks.count.path={builds}"]
    first = run_cli(*common, "trainer.epochs=1")
    assert first.returncode == 0, first.stderr
    assert builds.read_text().splitlines() == ["built"]
    [last] = (tmp_path / "train").glob("*/checkpoints/last.pt")
    resumed = run_cli(*common, "trainer.epochs=2", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert builds.read_text().splitlines() == ["built", "built"]
    folder = Path(resumed.stdout.split("outputs: ")[1].split()[0])
    assert f"resumed from {last} at epoch 1" in (folder / "train.log").read_text()


def test_resume_auto_ignores_runs_of_another_configuration(tmp_path):
    common = ["trainer.epochs=1", f"paths.log_dir={tmp_path}", "data.dataset.image_size=28"]
    first = run_cli("model=lenet5", *common, f"hydra.run.dir={tmp_path}/train/first")
    assert first.returncode == 0, first.stderr
    # Another model under the same task_name (`train`): starts fresh instead of failing.
    other = run_cli("model=resnet20", *common, f"hydra.run.dir={tmp_path}/train/second", "trainer.resume=auto")
    assert other.returncode == 0, other.stderr
    assert "does not fit" not in other.stderr
    lines = (tmp_path / "train/second/metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1


def test_a_run_resumed_into_a_new_folder_has_the_whole_history(tmp_path):
    common = ["model=lenet5", "data.dataset.image_size=28", f"paths.log_dir={tmp_path}", "task_name=exp"]
    assert run_cli(*common, "trainer.epochs=2", f"hydra.run.dir={tmp_path}/exp/a").returncode == 0
    ckpt = tmp_path / "exp/a/checkpoints/last.pt"
    proc = run_cli(*common, "trainer.epochs=3", f"hydra.run.dir={tmp_path}/elsewhere", f"trainer.resume={ckpt}")
    assert proc.returncode == 0, proc.stderr
    epochs = [json.loads(ln)["epoch"] for ln in (tmp_path / "elsewhere/metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]


# --- export: formats, files, table, inputs -------------------------------------------------

@pytest.fixture(scope="module")
def dead_channel_lenet(tmp_path_factory):
    """A LeNet-5 checkpoint whose second conv lost half its filters: the classifier's inputs
    shrink too, although no pass names it."""
    from learnsparse import train
    from learnsparse.core.checkpoint_io import load_checkpoint, save_atomic
    from learnsparse.core.config_dir import compose

    out = tmp_path_factory.mktemp("lenet")
    train(compose([*TINY, "model=lenet5", "data.dataset.image_size=28", "data.in_channels=1", "trainer.epochs=1",
                   f"paths.output_dir={out}"]))
    path = out / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    for key in ("features.3.weight", "features.3.bias"):
        if key in ckpt["model"]:
            ckpt["model"][key][::2] = 0
    save_atomic(ckpt, path)
    return path


def _lenet_conv_keys(ckpt_path):
    from learnsparse.core.checkpoint_io import load_checkpoint

    return [k for k, v in load_checkpoint(ckpt_path)["model"].items() if v.dim() == 4]


def test_lenet_fixture_zeroes_a_real_conv(dead_channel_lenet):
    assert "features.3.weight" in _lenet_conv_keys(dead_channel_lenet)


def test_export_table_lists_every_changed_layer_aligned(dead_channel_lenet, tmp_path):
    proc = run_cli(f"checkpoint={dead_channel_lenet}", "formats=pt2", f"output_dir={tmp_path}/out", "latency_rounds=3",
                   "latency_batch=4", tiny=False, entry="export_main")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/model.pt2").is_file() and not (tmp_path / "out/condensed.pt").exists()
    table = proc.stdout[proc.stdout.index("layer"):proc.stdout.index("wrote")].strip().splitlines()
    rows = {ln.split()[0]: ln for ln in table[1:]}
    linears = [name for name, ln in rows.items() if "Linear" in ln]
    assert linears, table  # the classifier that reads the removed channels is listed
    assert "e+" not in proc.stdout
    # Columns line up: every row's numbers end where the header's do.
    assert len({len(ln) for ln in table}) == 1, table


def test_onnx_is_one_file_that_works_alone(dead_channel_lenet, tmp_path):
    import numpy as np
    import onnxruntime as ort

    proc = run_cli(f"checkpoint={dead_channel_lenet}", "formats=onnx", f"output_dir={tmp_path}/out", "latency_rounds=3",
                   "latency_batch=4", tiny=False, entry="export_main")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "out/model.onnx.data").exists()
    alone = tmp_path / "copy" / "model.onnx"
    alone.parent.mkdir()
    alone.write_bytes((tmp_path / "out/model.onnx").read_bytes())
    session = ort.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
    y = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 1, 28, 28), np.float32)})[0]
    assert y.shape == (2, 10)


def test_condense_takes_inputs_as_torch_export_does(dead_channel_lenet):
    from learnsparse.export import condense_with_details, load_trained

    trained = load_trained(dead_channel_lenet).train()
    x = torch.randn(4, *trained.input_shape)
    for example in (x, (x,), [x]):
        result = condense_with_details(trained, example)
        assert result.max_abs_diff <= 1e-5 * result.output_scale
    assert trained.training  # handed back in the mode it came in
    with pytest.raises(TypeError, match="tuple of one tensor"):
        condense_with_details(trained, (x, x))


def test_export_from_python_leaves_the_thread_count_alone(dead_channel_lenet, tmp_path):
    from learnsparse.export import export, load

    before = torch.get_num_threads()
    report = export(dead_channel_lenet, formats=["pt"], output_dir=str(tmp_path / "py"), threads=1,
                    latency_rounds=2, latency_batch=2)
    assert torch.get_num_threads() == before
    model = load(report["files"]["pt"])
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(UserError, match="colour"):
        export(dead_channel_lenet, colour="blue")


# --- an installed wheel works outside the checkout ----------------------------------------

def test_wheel_trains_and_exports_outside_the_checkout(tmp_path):
    dist, target, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(dist), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("learnsparse-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}  # the wheel, not the checkout, is imported

    def run(entry, *args):
        code = f"import learnsparse.cli as c; assert c.__file__.startswith({str(target)!r}), c.__file__; c.{entry}()"
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                              cwd=work, env=env, stdin=subprocess.DEVNULL)

    trained = run("train_main", *TINY, "model=lenet5", "data.dataset.image_size=28", "data.in_channels=1",
                  "trainer.epochs=1", "paths.output_dir=runs/tiny")
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = run("export_main", "checkpoint=runs/tiny/checkpoints/last.pt", "latency_rounds=2", "latency_batch=2")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (work / "runs/tiny/export/condensed.pt").is_file()
    assert (work / "runs/tiny/.hydra/config.yaml").is_file()


def test_compose_without_output_dir_gives_a_run_folder(tmp_path, monkeypatch):
    from learnsparse import train
    from learnsparse.core.config_dir import compose

    monkeypatch.chdir(tmp_path)
    cfg = compose([*TINY, "model=lenet5", "data.dataset.image_size=28", "trainer.epochs=1"])
    assert str(cfg.paths.output_dir).startswith("./outputs/train/")
    metrics = train(cfg)
    assert (tmp_path / metrics["output_dir"] / "checkpoints" / "last.pt").is_file()


def test_library_calls_leave_global_state_alone(tmp_path):
    """compose keeps a caller's Hydra initialization. Timing and the ONNX export (which quiets
    the exporter's loggers while it runs) leave every logger's level, the thread count and
    grad mode as they found them."""
    import logging

    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from learnsparse.core.config_dir import compose
    from learnsparse.core.runtimes import interleaved_latency
    from learnsparse.export.artifacts import save_onnx

    with initialize_config_module("learnsparse.configs", version_base="1.3"):
        outer = GlobalHydra.instance().hydra
        compose(["model=lenet5"])
        assert GlobalHydra.instance().is_initialized() and GlobalHydra.instance().hydra is outer

    model, x = torch.nn.Conv2d(3, 4, 3), torch.randn(2, 3, 8, 8)

    def time_and_write_onnx():
        interleaved_latency({"m": model}, x, rounds=1, warmup=0)
        save_onnx(model, x, tmp_path / "m.onnx")

    time_and_write_onnx()  # imports what they use once: every logger they could touch exists now
    loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    found, threads = [(lg, lg.level) for lg in loggers], torch.get_num_threads()
    unusual = logging.CRITICAL + 10  # a level nothing sets by itself (and nothing logs meanwhile)
    try:
        for lg in loggers:
            lg.setLevel(unusual)
        time_and_write_onnx()
        assert [lg.name for lg in loggers if lg.level != unusual] == []
    finally:
        for lg, level in found:
            lg.setLevel(level)
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()
