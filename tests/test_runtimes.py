"""The runtimes the export is timed in run what they say, and one registry names them: the
tactics, the report, `learnsparse-export target=`, scripts/bench_deploy.py and the docs table.
torch.compile compiles every network it is given, however many of one model class (Dynamo
would otherwise fall back to eager silently)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from learnsparse.core import runtimes
from learnsparse.core.runtimes import export_target, layer_runtime, runner, target_runtime
from learnsparse.export import register_runtime

DOCS = Path(__file__).resolve().parent.parent / "docs" / "export.md"


def test_compile_runner_compiles_more_networks_of_one_class_than_dynamos_default_limit(tmp_path):
    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(2, 3, 8, 8)
    widths = range(1, torch._dynamo.config.recompile_limit + 3)
    runs = [runner(torch.nn.Sequential(torch.nn.Conv2d(3, k, 3), torch.nn.ReLU()).eval(), "compile", x, 1, tmp_path)
            for k in widths]
    assert counters["stats"]["unique_graphs"] == len(widths)
    assert [r().shape[1] for r in runs] == list(widths)
    torch._dynamo.reset()


def test_the_docs_table_lists_every_registered_runtime_with_its_target_and_layer_runtime():
    text = DOCS.read_text()
    section = text[text.index("## Runtimes"):]
    section = section[:section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if line.startswith("| `"):
            rows[cells[0]] = cells
    # (the page's own example registers one more when tests/test_docs.py runs it first)
    built_in = [r for r in runtimes.runtimes() if runtimes.runtime(r).runner.__module__ == runtimes.__name__]
    assert list(rows) == built_in
    for name, (_, target, layers, weights, _about) in rows.items():
        entry = runtimes.runtime(name)
        assert target == (entry.target or "—"), name
        assert layers == (layer_runtime(entry.target) if entry.target else "—"), name
        if entry.target:
            assert weights == ("channels-last" if entry.channels_last else "plain"), name


def test_targets_name_their_runtimes_and_unknown_names_say_what_exists():
    assert target_runtime("onnxruntime").name == "ort"
    assert target_runtime(None).name == "eager_cl"  # the default target: eager PyTorch, channels-last
    assert layer_runtime("aoti") == "compile"
    assert export_target("eager") == "eager" and export_target("ort") == "onnxruntime"
    with pytest.raises(ValueError, match=re.escape(str(runtimes.targets()))):
        target_runtime("tensorrt")
    with pytest.raises(ValueError, match="unknown runtime"):
        runner(torch.nn.Identity(), "tensorrt", torch.zeros(1), 1, Path("."))
    with pytest.raises(ValueError, match="already registered"):
        register_runtime("ort", lambda *a: None)
    with pytest.raises(ValueError, match="already names"):
        register_runtime("another_ort", lambda *a: None, target="onnxruntime")


def test_a_registered_runtime_is_a_target_for_condense_and_its_runner_is_what_the_tactics_time(monkeypatch):
    from learnsparse.export import condense_with_details
    from learnsparse.layers.end_state import at_end_state
    from learnsparse.models import create_model

    calls = []

    def run_counted(model, x, threads, work):
        calls.append(type(model).__name__)
        return lambda: model(x)

    monkeypatch.setattr(runtimes, "_RUNTIMES", dict(runtimes._RUNTIMES))  # registered for this test only
    register_runtime("counted", run_counted, target="counted")
    model = at_end_state(create_model("condensenet_mini", num_classes=10, in_channels=1), 0).eval()
    result = condense_with_details(model, torch.randn(8, 1, 28, 28), target="counted", threads=1, measure=True)
    assert result.tactics and len(calls) >= 2 * len(result.tactics)  # each learned layer's two forms
    assert not any(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                   for w in result.model.parameters())  # plain weights: not a channels-last runtime
