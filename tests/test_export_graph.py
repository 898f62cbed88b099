"""Exported graphs are the plain ops graph runtimes optimise: grouped Conv, channel Gather only
where the structure needs one, Concat — no ScatterND, Transpose, Range or Slice loops. This holds
for both routes a user takes: the files the export writes (`save_onnx`, `learnsparse-export`),
and `torch.onnx.export` / `torch.export` called by hand on what `condense` or `load` returns,
whatever its memory format."""
from __future__ import annotations

import collections

import onnx
import pytest
import torch

from learnsparse import sparsify
from learnsparse.core.graph_capture import quiet_onnx_export
from learnsparse.export import condense, dense_equivalent, load, save_onnx, save_pt2
from learnsparse.export.artifacts import save_condensed
from learnsparse.layers import FLGConv, LearnedGroupConv
from learnsparse.layers.end_state import at_end_state
from learnsparse.layers.igc_conv import IGCConv
from learnsparse.models import create_model

from .structured_zeros import place_structured_zeros

FORBIDDEN = {"ScatterND", "ScatterElements", "GatherElements", "Transpose", "Range", "Slice", "Loop", "NonZero",
             "Where"}
# What eager channels-last code would put into a torch.export graph.
FORBIDDEN_ATEN = {"aten.permute.default", "aten.gather.default", "aten.expand.default", "aten.transpose.int"}


def _histogram(path) -> collections.Counter:
    graph = onnx.load(str(path)).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    ops["ChannelGather"] = sum(1 for n in graph.node if n.op_type == "Gather"
                               and any(a.name == "axis" and a.i == 1 for a in n.attribute))
    return ops


def onnx_ops(model: torch.nn.Module, x: torch.Tensor, path) -> collections.Counter:
    """The op histogram of the file `learnsparse-export formats=onnx` writes."""
    save_onnx(model, x, path)
    return _histogram(path)


def direct_onnx_ops(model: torch.nn.Module, x: torch.Tensor, path) -> collections.Counter:
    """The op histogram of `torch.onnx.export(model, (x,), path)`, called as a user calls it."""
    with quiet_onnx_export():
        torch.onnx.export(model, (x,), str(path))
    return _histogram(path)


def aten_ops(model: torch.nn.Module, x: torch.Tensor) -> collections.Counter:
    with torch.no_grad():
        program = torch.export.export(model, (x,))
    return collections.Counter(str(n.target) for n in program.graph.nodes if n.op == "call_function")


def _as_trained(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    return at_end_state(model, seed).eval()


def _check_graph(ops, dense, learned_layers: int, gathers_per_layer: float):
    assert not FORBIDDEN & set(ops), ops
    assert ops["ChannelGather"] <= gathers_per_layer * learned_layers, ops
    # Beyond the dense graph: the channel Gathers and, for uneven groups, a conv per group
    # and a Split/Concat pair per split layer; nothing else.
    split = ops["Split"]
    extra = ops["ChannelGather"] + (ops["Conv"] - dense["Conv"]) + 2 * split
    assert sum(ops.values()) - ops["ChannelGather"] <= sum(dense.values()) + extra, (ops, dense)


def _check(trained, x, tmp_path, learned_layers: int, gathers_per_layer: float, by_hand_channels_last: bool = True):
    """Both routes: `torch.onnx.export` by hand of what `condense` returns gives the very graph
    `save_onnx` writes; a deployed model with channels-last weights (`target="eager"`, or
    converted by hand) traces the same layer ops, compared with the dense model in that format."""
    deployed = condense(trained, x)
    with torch.no_grad():
        y = trained(x)
        assert (deployed(x) - y).abs().max() <= 1e-5 * y.abs().max()
    dense = onnx_ops(dense_equivalent(trained), x, tmp_path / "dense.onnx")
    ops = onnx_ops(deployed, x, tmp_path / "export.onnx")
    _check_graph(ops, dense, learned_layers, gathers_per_layer)
    direct = direct_onnx_ops(deployed, x, tmp_path / "direct.onnx")
    assert direct == ops, (direct, ops)
    assert not FORBIDDEN_ATEN & set(aten_ops(deployed, x))
    if not by_hand_channels_last:
        return ops
    cl_dense = direct_onnx_ops(dense_equivalent(trained).to(memory_format=torch.channels_last), x,
                               tmp_path / "cl_dense.onnx")
    by_hand = condense(trained, x).to(memory_format=torch.channels_last)  # as `target="eager"` stores it
    _check_graph(direct_onnx_ops(by_hand, x, tmp_path / "cl.onnx"), cl_dense, learned_layers, gathers_per_layer)
    assert not FORBIDDEN_ATEN & set(aten_ops(by_hand, x))
    return ops


def test_condensenet_is_gathers_grouped_convs_and_concats(tmp_path):
    model = _as_trained(create_model("condensenet_mini", num_classes=10, in_channels=1), 0)
    learned = sum(isinstance(m, LearnedGroupConv) for m in model.modules())
    # Per layer: the kept inputs, and the interleave between the two grouped convs (a grouped
    # conv's output blocks cannot be permuted across groups, so this one cannot fold).
    x = torch.randn(2, 1, 28, 28)
    ops = _check(model, x, tmp_path, learned, 2)
    assert ops["Conv"] == 2 * learned + 1 and ops["Concat"] == learned
    assert ops["BatchNormalization"] == learned + 1  # the second BatchNorm of each layer folded
    # A model rebuilt by `load` traces the same graph by hand.
    save_condensed(tmp_path / "condensed.pt", condense(model, x),
                   {"_target_": "learnsparse.models.create_model", "name": "condensenet_mini", "num_classes": 10,
                    "in_channels": 1}, [1, 28, 28])
    assert direct_onnx_ops(load(tmp_path / "condensed.pt"), x, tmp_path / "loaded.onnx") == ops


# The uneven groups (split convs) in make test; balanced ones, one grouped conv, under -m slow.
@pytest.mark.parametrize("balanced", [pytest.param(True, marks=pytest.mark.slow), False])
def test_flgc_is_gathers_and_grouped_or_split_convs(tmp_path, balanced):
    torch.manual_seed(0)
    model = create_model("tv_resnet18", num_classes=10, in_channels=3)
    sparsify(model, "flgc", groups=4, include=["layer*.conv*"], balanced=balanced)
    model = _as_trained(model, 1)
    learned = sum(isinstance(m, FLGConv) for m in model.modules())
    # Per residual block: conv1's inputs, conv2's inputs (conv1's put-back folded in) and
    # conv2's put-back before the residual add.
    ops = _check(model, torch.randn(2, 3, 32, 32), tmp_path, learned, 1.5, by_hand_channels_last=balanced)
    assert ops["Conv"] >= 20
    if balanced:
        assert ops["Split"] == 0 and ops["Concat"] == 0


def test_igc_is_grouped_convs_and_gathers(tmp_path):
    torch.manual_seed(0)
    model = _as_trained(create_model("igc_resnet", depth=8, primary_groups=4, secondary_groups=2), 0)
    layers = sum(isinstance(m, IGCConv) for m in model.modules())
    # At most the two permutations of each block as Gathers (docs/export.md).
    ops = _check(model, torch.randn(2, 3, 16, 16), tmp_path, layers, 2)
    assert ops["Transpose"] == 0 and ops["Conv"] >= 2 * layers


def test_structured_zeros_export_has_no_gathers(tmp_path):
    torch.manual_seed(0)
    model = _as_trained(create_model("resnet20", num_classes=10, in_channels=3), 2)
    place_structured_zeros(model, seed=0, frac=0.5)
    ops = _check(model, torch.randn(2, 3, 32, 32), tmp_path, 0, 0)
    assert ops["ChannelGather"] == 0


def test_save_pt2_writes_an_in_memory_model_with_a_dynamic_batch(tmp_path):
    model = _as_trained(create_model("condensenet_mini", num_classes=10, in_channels=1), 0)
    x = torch.randn(2, 1, 28, 28)
    deployed = condense(model, x)
    save_pt2(deployed, (x,), tmp_path / "model.pt2")
    program = torch.export.load(str(tmp_path / "model.pt2"))
    bigger = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(program.module()(bigger), deployed(bigger), atol=1e-5, rtol=1e-5)
    ops = collections.Counter(str(n.target) for n in program.graph.nodes if n.op == "call_function")
    assert not FORBIDDEN_ATEN & set(ops), ops


@pytest.mark.parametrize("target, channels_last", [(None, False), ("eager", True), ("onnxruntime", False),
                                                   ("pt2", False), ("compile", False), ("aoti", False)])
def test_only_the_eager_target_stores_channels_last_weights(target, channels_last):
    model = _as_trained(create_model("condensenet_mini", num_classes=10, in_channels=1), 0)
    deployed = condense(model, torch.randn(8, 1, 28, 28), target=target, measure=False)
    # (a [C, 1, 1, 1] or [C, 1, k, k] weight is both layouts at once)
    convs = [m.weight for m in deployed.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1
             and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous() != channels_last for w in convs)


def test_a_measured_target_with_a_small_example_and_no_batch_warns():
    model = _as_trained(create_model("condensenet_mini", num_classes=10, in_channels=1), 0)
    with pytest.warns(UserWarning, match="batch"):
        condense(model, torch.randn(2, 1, 28, 28), target="eager", measure=True, threads=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        condense(model, torch.randn(2, 1, 28, 28), target="eager", measure=False)  # the rule reads MACs only
        condense(model, torch.randn(2, 1, 28, 28), target="eager")  # the default does not time
        condense(model, torch.randn(8, 1, 28, 28), target="eager", measure=False)
        condense(model, torch.randn(2, 1, 28, 28))  # no target: nothing is timed
