"""Connection matrices: constructors, blocks, ConnectivityConv, and the one exporter."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from learnsparse.export import condense
from learnsparse.layers import connectivity as C
from learnsparse.layers.connectivity_conv import ConnectivityConv, from_connectivity
from learnsparse.layers.permuted_group_conv import PermutedGroupConv
from learnsparse.models import create_model

from .test_export_graph import FORBIDDEN, onnx_ops


def _permuted_blocks(sizes_out, sizes_in, seed, holes=0.0):
    """A block matrix with rows and columns shuffled; `holes` removes connections inside blocks."""
    g = torch.Generator().manual_seed(seed)
    m = C.uneven(sizes_in, sizes_out)
    if holes:
        m = m & (torch.rand(m.shape, generator=g) >= holes)
    return m[torch.randperm(m.shape[0], generator=g)][:, torch.randperm(m.shape[1], generator=g)]


def test_constructors_have_the_documented_structure():
    assert torch.equal(C.groups(2, 4, 6), torch.tensor([[1, 1, 1, 0, 0, 0]] * 2 + [[0, 0, 0, 1, 1, 1]] * 2).bool())
    assert C.depthwise(8, 4).sum(dim=1).tolist() == [1] * 8 and C.depthwise(8, 4).sum(dim=0).tolist() == [2] * 4
    assert C.uneven([1, 3], [2, 2]).sum().item() == 1 * 2 + 3 * 2
    # ShuffleNet: the grouped conv's rows, interleaved — row p is filter (p mod G)·(C/G) + p // G.
    shuffled, plain = C.shuffled(2, 4, 4), C.groups(2, 4, 4)
    assert torch.equal(shuffled, plain[[0, 2, 1, 3]])
    # IGC with L·M channels connects everything (the paper's complementary condition) ...
    assert bool(C.interleaved(4, 2).all()) and bool(C.interleaved(3, 5).all())
    # ... and the 1998 table has 60 connections: C3's 1,516 parameters (60·25 + 16 biases).
    assert int(C.lenet5_c3().sum()) * 25 + 16 == 1516
    assert C.lenet5_c3().sum(dim=1).tolist() == [3] * 6 + [4] * 9 + [6]
    r = C.random(0.3, 50, 40)
    assert torch.equal(r, C.random(0.3, 50, 40)) and 0.2 < r.float().mean() < 0.4
    # Unsized constructors give patterns that the layer sizes.
    assert torch.equal(C.groups(4)(8, 12), C.groups(4, 8, 12))
    with pytest.raises(ValueError, match="equal groups"):
        C.groups(3, 8, 8)
    with pytest.raises(ValueError, match=r"\[out_channels, in_channels\]"):
        ConnectivityConv(6, 16, 5, C.lenet5_c3().t())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=5), st.integers(0, 10_000))
def test_blocks_finds_shuffled_groups(sizes, seed):
    sizes_out, sizes_in = [o for o, _ in sizes], [i for _, i in sizes]
    m = _permuted_blocks(sizes_out, sizes_in, seed)
    out_block, in_block, count = C.blocks(m)
    assert count == len(sizes)
    assert C.is_complete(m, out_block, in_block)
    assert sorted(torch.bincount(out_block).tolist()) == sorted(sizes_out)
    assert sorted(torch.bincount(in_block).tolist()) == sorted(sizes_in)


def test_blocks_marks_unconnected_channels():
    m = torch.zeros(4, 5, dtype=torch.bool)
    m[0, 1] = m[2, 1] = m[3, 4] = True
    out_block, in_block, count = C.blocks(m)
    assert count == 2
    assert out_block.tolist() == [0, -1, 0, 1] and in_block.tolist() == [-1, 0, -1, -1, 1]


def _exported_ops(layer: nn.Module, x: torch.Tensor, tmp_path):
    wrapped = nn.Sequential(layer).eval()
    deployed = condense(wrapped, x, channels_last=False)
    with torch.no_grad():
        y = wrapped(x)
        assert (deployed(x) - y).abs().max() <= 1e-5 * y.abs().max()
    return deployed, onnx_ops(deployed, x, tmp_path / "layer.onnx")


@pytest.mark.parametrize("name", ["groups", "depthwise", "uneven", "shuffled", "interleaved", "lenet5_c3", "random"])
def test_every_constructor_exports_exactly(name, tmp_path):
    torch.manual_seed(0)
    matrix = {"groups": C.groups(4, 16, 8), "depthwise": C.depthwise(16, 8), "uneven": C.uneven([2, 3, 3], [4, 4, 8]),
              "shuffled": C.shuffled(4, 16, 8), "interleaved": C.interleaved(4, 2), "lenet5_c3": C.lenet5_c3(),
              "random": C.random(0.15, 16, 8)}[name]
    out_ch, in_ch = matrix.shape
    layer = ConnectivityConv(in_ch, out_ch, 3, matrix, padding=1)
    assert torch.equal(layer.connectivity(), matrix)
    _, ops = _exported_ops(layer, torch.randn(3, in_ch, 10, 10), tmp_path)
    assert not FORBIDDEN & set(ops), ops
    if name in ("groups", "depthwise"):  # equal blocks in order: one grouped conv, no gather
        assert ops["Conv"] == 1 and ops["ChannelGather"] == 0, ops
    if name == "shuffled":  # equal blocks, outputs interleaved: one grouped conv + the put-back
        assert ops["Conv"] == 1 and ops["ChannelGather"] == 1, ops
    if name == "uneven":  # a conv per group on slices of the input, concatenated
        assert ops["Conv"] == 3 and ops["Concat"] == 1, ops
    if name in ("interleaved", "lenet5_c3"):  # one block: the conv with its zeros
        assert ops["Conv"] == 1 and ops["ChannelGather"] == 0, ops


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4), st.integers(0, 10_000),
       st.sampled_from([0.0, 0.3]), st.sampled_from([1, 3]))
def test_any_block_matrix_exports_exactly(sizes, seed, holes, kernel):
    torch.manual_seed(seed)
    sizes_out, sizes_in = [o for o, _ in sizes], [i for _, i in sizes]
    m = _permuted_blocks(sizes_out, sizes_in, seed, holes)
    layer = ConnectivityConv(m.shape[1], m.shape[0], kernel, m, padding=kernel // 2)
    with torch.no_grad():
        layer.bias.normal_()
        deployed = from_connectivity(layer.weight, layer.bias, m, layer.stride, layer.padding).eval()
        x = torch.randn(2, m.shape[1], 7, 7)
        y = layer(x)
        assert (deployed(x) - y).abs().max() <= 1e-5 * max(y.abs().max(), 1)
    out_block, _, count = C.blocks(m)
    if count > 1:  # the blocks became groups: no more MACs than the blocks hold
        assert isinstance(deployed, PermutedGroupConv)


def test_lenet5_1998_exports_exactly_and_keeps_its_table(tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet5_1998", num_classes=10, in_channels=1).eval()
    c3 = model.features[3]
    assert torch.equal(C.connectivity_of(c3), C.lenet5_c3())
    assert int(c3.connection.sum()) * 25 + c3.bias.numel() == 1516
    x = torch.randn(4, 1, 28, 28)
    deployed = condense(model, x)
    with torch.no_grad():
        assert (deployed(x) - model(x)).abs().max() <= 1e-5 * model(x).abs().max()


def test_connectivity_of_reads_weights_and_learned_layers():
    conv = nn.Conv2d(4, 6, 3, groups=2)
    assert torch.equal(C.connectivity_of(conv), C.groups(2, 6, 4))
    with torch.no_grad():
        conv.weight[0].zero_()  # a dead filter (SSL) reads nothing
    assert not C.connectivity_of(conv)[0].any()
    from learnsparse.layers import FLGConv, LearnedGroupConv
    lgc = LearnedGroupConv(8, 8, groups=2, condense_factor=2)
    lgc.condense_to(lgc.max_stage)
    assert C.connectivity_of(lgc).sum(dim=1).tolist() == [4] * 8
    flgc = FLGConv(8, 8, groups=2)
    in_group, out_group = flgc.assignments()
    assert torch.equal(C.connectivity_of(flgc), out_group[:, None] == in_group[None, :])


@pytest.mark.parametrize("model,extra,shape", [
    ("lenet5_1998", ["data.dataset.image_size=28", "data.in_channels=1"], (1, 28, 28)),
    ("igc_resnet", ["model.depth=8", "model.primary_groups=4", "model.secondary_groups=2"], (3, 16, 16))])
def test_fixed_sparse_models_train_show_in_tensorboard_export_and_reload(model, extra, shape, tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from learnsparse import train
    from learnsparse.export import load

    from .cli_runner import run_cli

    train(tiny_cfg(f"model={model}", *extra, "trainer.epochs=1", "logger=tensorboard"))
    run = tmp_path / "run"
    events = EventAccumulator(str(next((run / "tensorboard").glob("events.out.tfevents.*")))).Reload()
    images = events.Tags()["images"]
    assert images and all(t.startswith("connectivity/") for t in images), images
    proc = run_cli(f"checkpoint={run}/checkpoints/last.pt", "latency_rounds=3", "latency_batch=4", "formats=[pt]",
                   tiny=False, entry="export_main")
    assert proc.returncode == 0, proc.stderr
    loaded = load(run / "export" / "condensed.pt")
    report = json.loads((run / "export" / "report.json").read_text())
    assert report["exact"]
    with torch.no_grad():
        assert loaded(torch.randn(2, *shape)).shape == (2, 10)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=2, max_size=4), st.integers(0, 10_000),
       st.sampled_from(["padded", "split"]))
def test_deployed_layers_dense_form_is_the_same_function(sizes, seed, layout):
    torch.manual_seed(seed)
    m = _permuted_blocks([o for o, _ in sizes], [i for _, i in sizes], seed)
    layer = ConnectivityConv(m.shape[1], m.shape[0], 3, m, padding=1)
    deployed = from_connectivity(layer.weight, layer.bias, m, layer.stride, layer.padding, layout)
    x = torch.randn(2, m.shape[1], 6, 6)
    with torch.no_grad():
        assert torch.allclose(deployed.dense_form()(x), deployed(x), atol=1e-5)
    from learnsparse.layers import IndexSelectGroupConv, LearnedGroupConv

    lgc = LearnedGroupConv(12, 8, groups=4, condense_factor=4)
    lgc.condense_to(lgc.max_stage)
    isg = IndexSelectGroupConv.from_trained(lgc)
    x = torch.randn(2, 12, 5, 5)
    with torch.no_grad():
        assert torch.allclose(isg.dense_form()(x), isg(x), atol=1e-5) and torch.allclose(isg(x), lgc(x), atol=1e-5)
