"""learnsparse-export on a real training checkpoint: files, round trips, report, errors."""
import json
import subprocess
import sys

import pytest
import torch

from learnsparse import train
from learnsparse.export import load

from .cli_runner import run_cli
from .test_cli_errors import assert_one_line_error


@pytest.fixture(scope="module")
def condensed_run(tmp_path_factory):
    from learnsparse.core.config_dir import compose

    from .conftest import TINY

    out = tmp_path_factory.mktemp("cn")
    # Masked to the end, so the export's conversions show (a run condensed in training is
    # exported in test_condense_in_training.py).
    train(compose([*TINY, "model=condensenet_mini", "sparsity=condensenet", "data.dataset.image_size=28",
                   "sparsity.condensenet.condense_in_training=false",
                   "data.in_channels=1", "trainer.epochs=2", f"paths.output_dir={out}"]))
    return out


def _export(run, *args):
    return run_cli(f"checkpoint={run}/checkpoints/last.pt", "latency_rounds=3", "latency_batch=4", *args,
                   tiny=False, entry="export_main")


def test_export_writes_every_format_and_they_round_trip(condensed_run):
    # target=null: every learned block in its sparse form (a target picks forms by a rule, or by timing).
    proc = _export(condensed_run, "formats=[pt,pt2,onnx]", "target=null")
    assert proc.returncode == 0, proc.stderr
    out = condensed_run / "export"
    assert "max |trained - exported|" in proc.stdout and "CondensedDenseBlock" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["exact"] and report["max_abs_diff"] <= 1e-5 * report["output_scale"]
    assert report["macs_after"] < report["macs_before"] and report["params_after"] < report["params_before"]
    assert report["layers"] and report["onnx_max_abs_diff"] < 1e-4
    # Totals are quoted against the dense network (masked to the end: the same size as trained).
    assert report["params_dense"] == report["params_before"] and report["macs_dense"] == report["macs_before"]
    assert "dense / exported" in proc.stdout

    # condensed.pt: plain tensors only, rebuilt by learnsparse.export.load, same outputs as the trained model.
    blob = torch.load(out / "condensed.pt", weights_only=True)
    assert blob["format"] == "learnsparse.condensed"
    from learnsparse.core.checkpoint_io import load_checkpoint
    from learnsparse.export.from_checkpoint import model_from_checkpoint

    trained, _, shape = model_from_checkpoint(load_checkpoint(condensed_run / "checkpoints/last.pt"),
                                              condensed_run / "checkpoints/last.pt")
    deployed = load(out / "condensed.pt")
    x = torch.randn(6, *shape)
    with torch.no_grad():
        expected = trained(x)
        assert (deployed(x) - expected).abs().max() <= 1e-5 * expected.abs().max()
    torch.save({"x": x, "y": expected}, out / "probe.pt")

    # model.pt2 loads and runs in a process that never imports learnsparse, at another batch size.
    code = (
        "import sys, torch\n"
        f"p = torch.export.load(r'{out / 'model.pt2'}').module()\n"
        f"d = torch.load(r'{out / 'probe.pt'}')\n"
        "y = p(d['x'])\n"
        "assert 'learnsparse' not in sys.modules\n"
        "print(float((y - d['y']).abs().max() / d['y'].abs().max()))\n")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert probe.returncode == 0, probe.stderr
    assert float(probe.stdout.strip()) <= 1e-5


@pytest.mark.parametrize("args, fragment", [
    ((), "checkpoint=<path"),
    (("checkpoint=/no/such.pt",), "/no/such.pt"),
    (("checkpoint=/no/such.pt", "formats=[pt,tflite]"), "tflite"),
    (("checkpoint=x.pt", "colour=blue"), "colour"),
    (("checkpoint=/no/such.pt", "target=tensorrt"), "target=tensorrt"),
])
def test_bad_export_arguments_fail_with_one_line(args, fragment):
    proc = run_cli(*args, tiny=False, entry="export_main")
    assert_one_line_error(proc, fragment)


# ONNX Runtime under -m slow: test_tactics times CondenseNet's blocks there in make test.
@pytest.mark.parametrize("target", ["eager", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_export_picks_each_blocks_form_for_the_target_and_reports_it(condensed_run, tmp_path, target):
    proc = _export(condensed_run, f"target={target}", "batch=8", "measure=true", f"output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["latency_target"] == target and report["latency_ms_dense"] > 0
    assert len(report["tactics"]) == 3  # condensenet_mini's three dense blocks
    for block, t in report["tactics"].items():
        if t.get("whole_model"):  # the assembled network was fastest with every block in one form
            assert {u["form"] for u in report["tactics"].values()} == {t["form"]}
        else:
            assert t["form"] == min(t["ms"], key=t["ms"].get), (block, t)
    assert f"fastest in {target}" in proc.stdout
    model = load(tmp_path / "condensed.pt")  # the chosen forms are rebuilt
    assert model(torch.zeros(2, *model.input_shape)).shape == (2, 10)


def test_default_export_times_nothing_to_choose_forms(condensed_run, tmp_path):
    # A default never depends on timing: target=eager picks forms by the multiply-add rule.
    proc = _export(condensed_run, f"output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    tactics = json.loads((tmp_path / "report.json").read_text())["tactics"]
    assert tactics and all("ms" not in t and t["form"] in ("sparse", "dense") for t in tactics.values())
    assert "by the multiply-add rule" in proc.stdout
