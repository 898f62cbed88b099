"""Exported graphs are the plain ops graph runtimes optimise: grouped Conv, channel Gather only
where the structure needs one, Concat — no ScatterND, Transpose, Range or Slice loops."""
from __future__ import annotations

import collections

import onnx
import pytest
import torch

from learnsparse import sparsify
from learnsparse.export import condense, dense_equivalent
from learnsparse.export.artifacts import save_onnx
from learnsparse.end_state import at_end_state
from learnsparse.models import create_model
from learnsparse.nn import FLGConv, LearnedGroupConv

from .structured_zeros import place_structured_zeros

FORBIDDEN = {"ScatterND", "ScatterElements", "Transpose", "Range", "Slice", "Loop", "NonZero", "Where"}


def onnx_ops(model: torch.nn.Module, x: torch.Tensor, path) -> collections.Counter:
    """The op histogram of the file `learnsparse-export formats=onnx` writes."""
    save_onnx(path, model, x)
    graph = onnx.load(str(path)).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    ops["ChannelGather"] = sum(1 for n in graph.node if n.op_type == "Gather"
                               and any(a.name == "axis" and a.i == 1 for a in n.attribute))
    return ops


def _as_trained(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    return at_end_state(model, seed).eval()


def _check(trained, x, tmp_path, learned_layers: int, gathers_per_layer: float):
    deployed = condense(trained, x)
    ops = onnx_ops(deployed, x, tmp_path / "export.onnx")
    dense = onnx_ops(dense_equivalent(trained), x, tmp_path / "dense.onnx")
    assert not FORBIDDEN & set(ops), ops
    assert ops["ChannelGather"] <= gathers_per_layer * learned_layers, ops
    # Beyond the dense graph: the channel Gathers and, for uneven groups, a conv per group
    # and a Split/Concat pair per split layer; nothing else.
    split = ops["Split"]
    extra = ops["ChannelGather"] + (ops["Conv"] - dense["Conv"]) + 2 * split
    assert sum(ops.values()) - ops["ChannelGather"] <= sum(dense.values()) + extra, (ops, dense)
    with torch.no_grad():
        y = trained(x)
        assert (deployed(x) - y).abs().max() <= 1e-5 * y.abs().max()
    return ops


def test_condensenet_is_gathers_grouped_convs_and_concats(tmp_path):
    model = _as_trained(create_model("condensenet_mini", num_classes=10, in_channels=1), 0)
    learned = sum(isinstance(m, LearnedGroupConv) for m in model.modules())
    # Per layer: the kept inputs, and the interleave between the two grouped convs (a grouped
    # conv's output blocks cannot be permuted across groups, so this one cannot fold).
    ops = _check(model, torch.randn(2, 1, 28, 28), tmp_path, learned, 2)
    assert ops["Conv"] == 2 * learned + 1 and ops["Concat"] == learned
    assert ops["BatchNormalization"] == learned + 1  # the second BatchNorm of each layer folded


@pytest.mark.parametrize("balanced", [True, False])
def test_flgc_is_gathers_and_grouped_or_split_convs(tmp_path, balanced):
    torch.manual_seed(0)
    model = create_model("tv_resnet18", num_classes=10, in_channels=3)
    sparsify(model, "flgc", groups=4, include=["layer*.conv*"], balanced=balanced)
    model = _as_trained(model, 1)
    learned = sum(isinstance(m, FLGConv) for m in model.modules())
    # Per residual block: conv1's inputs, conv2's inputs (conv1's put-back folded in) and
    # conv2's put-back before the residual add.
    ops = _check(model, torch.randn(2, 3, 32, 32), tmp_path, learned, 1.5)
    assert ops["Conv"] >= 20
    if balanced:
        assert ops["Split"] == 0 and ops["Concat"] == 0


def test_structured_zeros_export_has_no_gathers(tmp_path):
    torch.manual_seed(0)
    model = _as_trained(create_model("resnet20", num_classes=10, in_channels=3), 2)
    place_structured_zeros(model, seed=0, frac=0.5)
    ops = _check(model, torch.randn(2, 3, 32, 32), tmp_path, 0, 0)
    assert ops["ChannelGather"] == 0
