"""Thinned layers (after dead-channel removal) get measured widths, as learned layers get
measured forms: exact, padded with zero channels to a multiple of 8 or 16, or dense. Padding
is exact, `load` replays it, and the default (no target, or measure=False) keeps exact widths."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from learnsparse.export import condense_with_details, load
from learnsparse.export import thinned_widths as tw
from learnsparse.export.artifacts import save_condensed
from learnsparse.models import create_model

SPEC = {"_target_": "learnsparse.models.create_model", "num_classes": 10, "in_channels": 3}


@torch.no_grad()
def _slimmed(name: str, keep: float = 0.4) -> nn.Module:
    """Network slimming's end state: BatchNorm γ = β = 0 on all but an odd number of channels."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3).eval()
    g = torch.Generator().manual_seed(0)
    modules = list(model.named_modules())
    for (name_, conv), (_, bn) in zip(modules, modules[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
            if name.startswith("resnet") and not name_.endswith("conv1"):
                continue  # a residual stream keeps every channel (test below)
            kept = max(1, round(keep * conv.out_channels)) | 1
            dead = torch.randperm(conv.out_channels, generator=g)[kept:]
            bn.weight[dead] = 0
            bn.bias[dead] = 0
    return model


def _widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if type(m) is nn.Conv2d]


@pytest.mark.parametrize("name", ["vgg16_bn", "resnet20"])
def test_every_width_form_is_exact_and_load_replays_it(tmp_path, name):
    trained = _slimmed(name)
    x = torch.randn(2, 3, 32, 32)
    exact = condense_with_details(trained, x).model
    assert any(w % 8 for w in _widths(exact)), "the case should leave odd widths"
    candidates = tw.width_candidates(exact, trained, x, channels_last=False)
    assert set(candidates) <= {"pad8", "pad16", "dense"} and "pad8" in candidates
    for form, (padded, plan) in candidates.items():
        for name_, grow in plan.items():
            if "out" in grow:
                width, trained_width = padded.get_submodule(name_).out_channels, trained.get_submodule(name_).out_channels
                assert width == trained_width if form == "dense" else \
                    (width % tw.MULTIPLES[form] == 0 or width == trained_width), (form, name_, width)
        with torch.no_grad():
            y = trained(x)
            assert (padded(x) - y).abs().max() <= 1e-5 * y.abs().max(), form
        save_condensed(tmp_path / "c.pt", padded, {**SPEC, "name": name}, [3, 32, 32])
        rebuilt = load(tmp_path / "c.pt")
        assert _widths(rebuilt) == _widths(padded)
        with torch.no_grad():
            assert torch.equal(rebuilt(x), padded(x))


def test_a_residual_stream_keeps_its_exact_width():
    trained = create_model("resnet20", num_classes=10, in_channels=3).eval()
    with torch.no_grad():
        for block in [trained.layer1[0], trained.layer1[1], trained.layer1[2]]:
            block.bn2.weight[:5] = 0  # the stream's channels 0-4, written by every block of the stage
            block.bn2.bias[:5] = 0
        trained.bn1.weight[:5] = 0
        trained.bn1.bias[:5] = 0
    groups = tw.paddable_groups(condense_with_details(trained, torch.randn(2, 3, 32, 32)).model,
                                torch.randn(2, 3, 32, 32))
    assert groups and all(g["writer"].endswith("conv1") and "layer" in g["writer"] for g in groups)


def test_the_fastest_width_form_in_the_target_is_kept_and_the_default_keeps_exact_widths(monkeypatch):
    trained = _slimmed("vgg16_bn")
    x = torch.randn(8, 3, 32, 32)
    exact = condense_with_details(trained, x).model
    assert condense_with_details(trained, x, target="eager", measure=False).widths == {}
    assert condense_with_details(trained, x, target="eager").widths == {}  # the default times nothing
    from learnsparse.export import tactics

    for fastest in ("pad16", "exact", "dense"):
        fake = {"exact": 3.0, "pad8": 2.0, "pad16": 2.5, "dense": 4.0, fastest: 1.0}
        monkeypatch.setattr(tactics, "whole_model_ms", lambda models, *a, **k: {m: fake[m] for m in models})
        result = condense_with_details(trained, x, target="eager", batch=8, measure=True)
        assert result.widths["form"] == fastest and set(result.widths["ms"]) == {"exact", "pad8", "pad16", "dense"}
        if fastest == "exact":
            assert _widths(result.model) == _widths(exact)
        else:
            assert all(a <= b for a, b in zip(_widths(exact), _widths(result.model)))
            assert _widths(result.model) != _widths(exact)
        assert all(v[0] == exact.get_submodule(k).out_channels for k, v in result.widths["layers"].items())


def test_the_report_says_loudly_when_the_export_is_slower_than_dense():
    from learnsparse.export.report import format_report

    report = {"params_dense": 10, "macs_dense": 100, "params_before": 10, "params_after": 5, "macs_before": 100,
              "macs_after": 50, "latency_batch": 64, "latency_target": "onnxruntime", "latency_ms_dense": 1.0,
              "latency_ms_after": 1.064, "speedup": 1 / 1.064, "max_abs_diff": 0.0, "output_scale": 1.0,
              "exact": True, "latency_ms_masked_eager": 2.0, "speedup_vs_masked_eager": 1.9, "layers": [],
              "slower_than_dense": True}
    assert format_report(report).splitlines()[0].startswith("WARNING: the export is SLOWER than the dense network "
                                                            "in onnxruntime (0.94x")
    assert "SLOWER" not in format_report({**report, "slower_than_dense": False, "speedup": 1.2})
