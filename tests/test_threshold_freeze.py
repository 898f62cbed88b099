"""Threshold-and-freeze, the sparsity report and SSL runs end to end on tiny data."""
import json

import pytest
import torch

from learnsparse import train
from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.engine import NonFiniteLossError
from learnsparse.export import condense_with_details
from learnsparse.models import create_model
from learnsparse.sparsity.report import layer_sparsity

SSL_RUN = ["model=resnet20", "data.dataset.image_size=16", "optim.lr=0.05", "optim.weight_decay=1e-3",
           "sparsity=[ssl_filter_channel,ssl_depth,threshold]", "sparsity.ssl_filter_channel.strength=0.02",
           "sparsity.ssl_filter_channel.mode=proximal", "sparsity.ssl_depth.strength=0.05",
           "sparsity.ssl_depth.mode=proximal", "sparsity.ssl_filter_channel.until=0.5", "sparsity.ssl_depth.until=0.5",
           "sparsity.threshold.at=0.5", "sparsity.threshold.rule=percentile", "sparsity.threshold.tau=0.3",
           "sparsity.threshold.shrink_in_training=false",  # the zeros are checked, then exported
           "sparsity.threshold.kinds=[filter,channel]"]


def _frozen_zeros_hold(model_state: dict, masks: dict) -> None:
    assert masks
    for name, keep in masks.items():
        assert (model_state[name][~keep] == 0).all(), name


def test_freeze_holds_zeros_through_momentum_and_weight_decay_and_resume(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg(*SSL_RUN, "trainer.epochs=4", f"paths.output_dir={tmp_path}/full"))
    ckpt = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    masks = ckpt["hooks"]["threshold"]["masks"]
    _frozen_zeros_hold(ckpt["model"], masks)
    assert metrics["frozen_zero_weights"] == sum(int((~m).sum()) for m in masks.values()) > 0
    # A dead filter takes its BatchNorm's γ and β with it, so the channel outputs exactly zero.
    conv_keep = {k: m for k, m in masks.items() if k.endswith("conv1.weight") and "layer" in k}
    for name, keep in conv_keep.items():
        dead = ~keep.flatten(1).any(1)
        bn = name.replace("conv1.weight", "bn1")
        if dead.any():
            assert (ckpt["model"][f"{bn}.weight"][dead] == 0).all() and (ckpt["model"][f"{bn}.bias"][dead] == 0).all()
    # Resume from epoch 3 (after freezing): the masks come back and the end state is identical.
    # 4 steps per epoch: frozen at step 8, crash at step 13, so the epoch-3 checkpoint resumes.
    with pytest.raises(NonFiniteLossError):
        train(tiny_cfg(*SSL_RUN, "trainer.epochs=4", f"paths.output_dir={tmp_path}/part",
                       "+callbacks.nan._target_=tests.helpers.NaNAtStep", "+callbacks.nan.step=13"))
    assert load_checkpoint(tmp_path / "part/checkpoints/last.pt")["hooks"]["threshold"]["masks"]
    train(tiny_cfg(*SSL_RUN, "trainer.epochs=4", f"paths.output_dir={tmp_path}/part", "trainer.resume=auto"))
    resumed = load_checkpoint(tmp_path / "part/checkpoints/last.pt")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


def test_ssl_run_reports_sparsity_and_exports_smaller(tiny_cfg, tmp_path):
    train(tiny_cfg(*SSL_RUN, "trainer.epochs=2"))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["train_loss_reg_ssl_filter_channel"] > 0 and lines[0]["train_loss_reg_ssl_depth"] > 0
    rows = lines[-1]["sparsity_layers"]
    assert set(rows["layer1.0.conv1"]) >= {"shape", "nonzeros", "zero_filters_pct", "zero_channels_pct",
                                           "zero_fibres_pct", "removed"}
    assert lines[-1]["weights_zero_pct"] > 0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    model = create_model("resnet20", num_classes=10, in_channels=3)
    model.load_state_dict(ckpt["model"])
    result = condense_with_details(model, torch.randn(4, 3, 16, 16))
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())


def test_layer_sparsity_counts_structure():
    w = torch.ones(4, 3, 2, 2)
    w[1] = 0          # one filter of four
    w[:, 2] = 0       # one channel of three
    w[:, 0, 0, 1] = 0  # one more fibre
    row = layer_sparsity(w)
    assert row["zero_filters_pct"] == 25.0
    assert row["zero_channels_pct"] == pytest.approx(100 / 3)
    assert row["zero_fibres_pct"] == pytest.approx(100 * 5 / 12)
    assert row["nonzeros"] == 3 * (12 - 4 - 1) and not row["removed"]


def test_percentile_rule_kills_that_fraction_of_batchnorm_channels(tiny_cfg, tmp_path):
    train(tiny_cfg("model=vgg16_bn", "data.dataset.image_size=32", "sparsity=[bn_slimming,threshold]",
                   "sparsity.threshold.layers=batchnorm", "sparsity.threshold.rule=percentile",
                   "sparsity.threshold.tau=0.4", "sparsity.threshold.at=0.5", "trainer.epochs=2",
                   "sparsity.threshold.shrink_in_training=false"))
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    gammas = torch.cat([v for k, v in ckpt["model"].items() if k.startswith("features") and k.endswith(".weight")
                        and v.dim() == 1])
    assert (gammas == 0).float().mean().item() == pytest.approx(0.4, abs=0.01)


def test_per_step_calls_do_not_walk_the_parameters(monkeypatch):
    """after_backward and after_step run every step: before the freeze they do nothing, after
    it they reuse one (parameter, mask) list."""
    from learnsparse.sparsity.threshold_freeze import ThresholdFreeze

    model = create_model("lenet5", num_classes=10, in_channels=1)
    hook = ThresholdFreeze(model, at=0.5, tau=1e-3)
    calls = []
    real = type(model).named_parameters
    monkeypatch.setattr(type(model), "named_parameters", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    for _ in range(3):
        hook.after_backward()
        hook.after_step()
    assert calls == []
    hook.masks = {"features.0.weight": torch.ones_like(model.features[0].weight, dtype=torch.bool)}
    for _ in range(3):
        hook.after_backward()
        hook.after_step()
    assert len(calls) == 1
