"""Each learned layer is deployed in the form that is fastest for the target runtime (sparse
or dense), chosen by timing both on the layer's input, or by a fixed rule; `load` replays it."""
from __future__ import annotations

import pytest
import torch

from learnsparse import sparsify
from learnsparse.export import condense_with_details, load
from learnsparse.export.artifacts import save_condensed
from learnsparse.layers import FLGConv, LearnedGroupConv
from learnsparse.models import create_model

SPEC = {"_target_": "learnsparse.models.create_model", "num_classes": 10}


@torch.no_grad()
def _trained(name: str, in_channels: int, seed: int, flgc: bool) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_channels=in_channels).eval()
    if flgc:
        sparsify(model, "flgc", groups=4, include=["layer*.conv*"])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
        elif isinstance(m, FLGConv):
            m.in_logits.normal_()
            m.out_logits.normal_()
            m.freeze()
        elif isinstance(m, LearnedGroupConv):
            m.condense_to(m.max_stage)
    return model


CASES = [("resnet20", 3, 32, True), ("condensenet_mini", 1, 28, False)]


@pytest.mark.parametrize("name, channels, size, flgc, target, measure", [
    (*case, target, measure) if not (case[0] == "resnet20" and target == "onnxruntime")
    # FLGC ResNet-20 timed in ONNX Runtime builds a session per form of each of its layers
    # (minutes on two cores): under -m slow; CondenseNet's blocks are timed there in make test.
    else pytest.param(*case, target, measure, marks=pytest.mark.slow)
    for case in CASES for target, measure in [("eager", True), ("onnxruntime", True), ("eager", False)]])
def test_each_layer_takes_its_faster_form_and_load_replays_it(tmp_path, name, channels, size, flgc, target,
                                                              measure):
    model = _trained(name, channels, seed=len(target), flgc=flgc)
    x = torch.randn(2, channels, size, size)
    result = condense_with_details(model, x, target=target, batch=8, measure=measure, threads=2)
    assert result.tactics, "no learned layer was considered"
    for layer, t in result.tactics.items():
        assert t["macs"]["sparse"] < t["macs"]["dense"]
        if measure and t.get("whole_model"):
            # the assembled network was fastest with every layer in one form
            assert {u["form"] for u in result.tactics.values()} == {t["form"]}
        elif measure:
            assert t["form"] == min(t["ms"], key=t["ms"].get), (layer, t)
        else:
            assert t["form"] == ("sparse" if t["macs"]["sparse"] <= 0.5 * t["macs"]["dense"] else "dense")
    assert result.max_abs_diff <= 1e-5 * result.output_scale
    save_condensed(tmp_path / "condensed.pt", result.model, {**SPEC, "name": name, "in_channels": channels},
                   [channels, size, size])
    rebuilt = load(tmp_path / "condensed.pt")
    with torch.no_grad():
        assert torch.equal(rebuilt(x), result.model(x))


def test_a_dense_choice_deploys_the_dense_form():
    model = _trained("resnet20", 3, seed=0, flgc=True)
    x = torch.randn(2, 3, 32, 32)
    from learnsparse.export import tactics

    forced = {name: "dense" for name, _ in tactics.tactic_layers(model)}
    from learnsparse.export.condense import _condense

    result = _condense(model, x, None, 1e-5, True, {n: {"form": f} for n, f in forced.items()})
    assert not any(type(m).__name__ == "PermutedGroupConv" for m in result.model.modules())
    assert result.max_abs_diff <= 1e-5 * result.output_scale


def test_aoti_target_times_layers_in_inductor_and_the_assembled_network_in_aotinductor(monkeypatch):
    from learnsparse.export import tactics

    used = []

    def fake_runner(model, runtime, x, threads, work, eager_form=None):
        used.append(runtime)
        return lambda: model(x)

    monkeypatch.setattr(tactics, "runner", fake_runner)
    model = _trained("condensenet_mini", 1, seed=0, flgc=False)
    result = condense_with_details(model, torch.randn(2, 1, 28, 28), target="aoti", batch=4, threads=2, measure=True)
    layers = len(result.tactics)
    assert layers and used[:2 * layers] == ["compile"] * (2 * layers)  # each layer's two forms
    assert set(used[2 * layers:]) == {"aoti"}  # the assembled candidates, in AOTInductor itself
    assert result.max_abs_diff <= 1e-5 * result.output_scale


def test_each_layer_takes_the_form_its_timings_favour_and_the_whole_network_is_checked(monkeypatch):
    """Timings given, not measured: the choice must follow them whatever the machine's load."""
    from learnsparse.export import tactics

    model = _trained("resnet20", 3, seed=0, flgc=True)
    names = [n for n, _ in tactics.tactic_layers(model)]
    calls = []

    def fake_ms(runners, rounds=21, warmup=3):
        if set(runners) == {"sparse", "dense"}:  # one layer's two forms, layers in order
            calls.append(len(calls))
            return {"sparse": 2.0, "dense": 1.0} if len(calls) == 1 else {"sparse": 1.0, "dense": 2.0}
        return {k: {"chosen": 1.0}.get(k, 5.0) for k in runners}  # the assembled networks

    monkeypatch.setattr(tactics, "runner", lambda *a, **k: (lambda: None))
    monkeypatch.setattr(tactics, "interleaved_ms", fake_ms)
    result = condense_with_details(model, torch.randn(2, 3, 32, 32), target="onnxruntime", batch=8, measure=True)
    assert [result.tactics[n]["form"] for n in names] == ["dense"] + ["sparse"] * (len(names) - 1)
    assert not any(t.get("whole_model") for t in result.tactics.values())
    kinds = [type(m).__name__ for m in result.model.modules()]
    assert kinds.count("PermutedGroupConv") == len(names) - 1
