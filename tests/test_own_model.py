"""The path of a user who brings a model and weights of their own: each trap met on it once."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from learnsparse import train
from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.engine.run import build_model_and_plugins, find_start
from learnsparse.models import create_model

from .conftest import TINY
from .test_cli_errors import assert_one_line_error

SLIMMING = ["model=resnet20", "sparsity=[bn_slimming,threshold]", "sparsity.threshold.layers=batchnorm",
            "sparsity.threshold.rule=percentile", "sparsity.threshold.tau=0.3"]


@pytest.fixture
def trained_resnet20(tmp_path):
    """A plain state dict whose γ are what training left (anything but the 0.5 slimming starts at)."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.2, 2.0)
    torch.save(model.state_dict(), tmp_path / "trained.pt")
    return tmp_path / "trained.pt", model.state_dict()


def _gammas(model):
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("overwrite", [False, True])
def test_gamma_init_leaves_weights_from_init_from_alone_unless_asked(tiny_cfg, trained_resnet20, overwrite):
    path, state = trained_resnet20
    cfg = tiny_cfg("model=resnet20", "sparsity=bn_slimming", f"trainer.init_from={path}",
                   f"sparsity.bn_slimming.overwrite_loaded={str(overwrite).lower()}")
    assert cfg.sparsity.bn_slimming.gamma_init == 0.5
    model, _ = build_model_and_plugins(cfg, find_start(cfg))
    own = model.state_dict()
    gammas = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert gammas
    for k in gammas:
        assert torch.equal(own[k], state[k]) != overwrite, k
        assert bool(torch.all(own[k] == 0.5)) == overwrite, k


def test_gamma_init_still_starts_a_run_from_scratch_at_half(tiny_cfg):
    cfg = tiny_cfg("model=resnet20", "sparsity=bn_slimming")
    model, _ = build_model_and_plugins(cfg, find_start(cfg))
    assert all(torch.all(g == 0.5) for g in _gammas(model))


def test_best_pt_is_never_the_network_before_the_cut(tiny_cfg, tmp_path, monkeypatch, caplog):
    # Validation is best before the cut (as it is in real runs): 90, 80, 70 % over 3 epochs,
    # with the threshold at progress 0.5, in the second epoch.
    import learnsparse.engine.hooks.evaluation as evaluation

    scores = iter([90.0, 80.0, 70.0])
    monkeypatch.setattr(evaluation, "evaluate",
                        lambda *a, **k: {"val_loss": 1.0, "val_top1": next(scores), "val_top5": 100.0})
    with caplog.at_level("INFO", logger="learnsparse"):
        train(tiny_cfg(*SLIMMING, "trainer.epochs=3"))
    ckpts = tmp_path / "run" / "checkpoints"
    best, last = load_checkpoint(ckpts / "best.pt"), load_checkpoint(ckpts / "last.pt")
    assert best["epoch"] == 1  # the first epoch after the cut, the best of those with the final structure
    shapes = {k: v.shape for k, v in last["model"].items()}
    assert {k: v.shape for k, v in best["model"].items()} == shapes
    dense = create_model("resnet20", num_classes=10, in_channels=3).state_dict()
    assert sum(v.numel() for v in best["model"].values()) < sum(v.numel() for v in dense.values())

    # "froze N" counts channels: each one's γ and β are two of the weights it zeroes.
    m = re.search(r"threshold: froze (\d+) channels at zero \((\d+) weights", caplog.text)
    assert m, caplog.text
    channels, weights = int(m.group(1)), int(m.group(2))
    bn_channels = sum(v.numel() for k, v in dense.items() if k.endswith(".running_mean"))
    assert channels == int(0.3 * bn_channels) and weights == 2 * channels


MY_MODELS = textwrap.dedent("""
    import torch.nn as nn


    class TinyNet(nn.Module):
        def __init__(self, num_classes=10, in_channels=3):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))
""")


def _run_in(folder, *args):
    """The console script itself: unlike `python -c`, it does not put the current folder on
    sys.path (PYTHONPATH names the checkout only, not `folder`)."""
    script = Path(sys.executable).parent / "learnsparse-train"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([str(script), *TINY, *args], cwd=folder, capture_output=True, text=True,
                          timeout=300, env=env, stdin=subprocess.DEVNULL)


def test_a_target_model_in_the_current_folder_trains(tmp_path):
    (tmp_path / "my_models.py").write_text(MY_MODELS)
    (tmp_path / "my_configs" / "model").mkdir(parents=True)
    (tmp_path / "my_configs" / "model" / "tiny.yaml").write_text(
        "_target_: my_models.TinyNet\nnum_classes: ${data.num_classes}\nin_channels: ${data.in_channels}\n")
    proc = _run_in(tmp_path, "--config-dir", "my_configs", "model=tiny", "trainer.epochs=1",
                   f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["record"]["model"]["_target_"] == "my_models.TinyNet"


def test_a_model_that_does_not_import_is_named_without_init_from(tmp_path):
    (tmp_path / "my_configs" / "model").mkdir(parents=True)
    (tmp_path / "my_configs" / "model" / "gone.yaml").write_text("_target_: not_here.Net\nnum_classes: 10\n")
    proc = _run_in(tmp_path, "--config-dir", "my_configs", "model=gone", f"hydra.run.dir={tmp_path}/run")
    assert_one_line_error(proc, "model=not_here.Net", "not_here")
    assert "init_from" not in proc.stderr
