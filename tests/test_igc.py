"""IGCV1: the block, the CIFAR networks (parameter counts of the official get_symbol), the
width analysis, and the export."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from learnsparse.export import condense, dense_equivalent
from learnsparse.layers import connectivity as C
from learnsparse.layers.igc_conv import IGCConv
from learnsparse.models import create_model
from learnsparse.models.igc import block_params, width

from .test_export_graph import FORBIDDEN, _as_trained, onnx_ops


def official_params(depth: int, L: int, M: int, num_classes: int) -> int:
    """Parameters of the official resnet_igc get_symbol, counted layer by layer from its text."""
    n = (depth - 2) // 6
    widths = [L * M, L * M, 2 * L * M, 4 * L * M]
    total = 3 * widths[0] * 9 + 2 * widths[0]  # stem conv + BN
    for stage in range(3):
        kin, kout = widths[stage], widths[stage + 1]
        for _ in range(n):
            for cin, m in ((kin, kin // L), (kout, kout // L)):  # two IGC layers
                total += kout * (cin // L) * 9 + kout * (kout // m) + 2 * kout
            if kin != kout:
                total += kout * (kin // L) + 2 * kout  # grouped 1x1 projection + BN
            kin = kout
    return total + widths[3] * num_classes + num_classes


@pytest.mark.parametrize("depth,L,M,classes", [(38, 24, 2, 10), (20, 8, 4, 100), (26, 4, 8, 10), (8, 16, 1, 10)])
def test_igc_resnet_has_the_official_parameter_count(depth, L, M, classes):
    model = create_model("igc_resnet", depth=depth, primary_groups=L, secondary_groups=M, num_classes=classes)
    assert sum(p.numel() for p in model.parameters()) == official_params(depth, L, M, classes)


def test_igc_resnet38_l24m2_has_325690_parameters():
    assert sum(p.numel() for p in create_model("igc_resnet38_l24m2").parameters()) == 325_690
    regular = create_model("regular_resnet38_w48")
    assert not any(isinstance(m, IGCConv) for m in regular.modules())
    assert regular.fc.in_features == 192


def _reorder(x: torch.Tensor, branch: int) -> torch.Tensor:
    """The official Reorder operator, by its definition: out[j·B + b] = in[b·(C/B) + j]."""
    c = x.shape[1]
    out = torch.empty_like(x)
    for b in range(branch):
        for j in range(c // branch):
            out[:, j * branch + b] = x[:, b * (c // branch) + j]
    return out


def test_igc_block_is_primary_reorder_secondary_reorder():
    torch.manual_seed(0)
    layer = IGCConv(12, 24, 3, 1, 1, primary_groups=4, secondary_groups=6)
    x = torch.randn(2, 12, 5, 5)
    expected = _reorder(layer.secondary(_reorder(layer.primary(x), 4)), 6)
    assert torch.allclose(layer(x), expected)
    # Secondary partition m takes the m-th channel of every primary partition (out = L·M).
    square = IGCConv(8, 8, primary_groups=4, secondary_groups=2)
    first = square.interleave_order()
    assert first[:4].tolist() == [0, 2, 4, 6]  # partition 0: channel 0 of each primary partition
    assert bool(square.connectivity().all()) and torch.equal(square.connectivity(), C.interleaved(4, 2))


def test_igc_dense_form_is_the_product_kernel():
    torch.manual_seed(1)
    layer = IGCConv(16, 16, 3, 2, 1, primary_groups=4, secondary_groups=4)
    dense = nn.Conv2d(16, 16, 3, 2, 1, bias=False)
    dense.weight.data.copy_(layer.composed_weight())
    x = torch.randn(2, 16, 9, 9)
    assert torch.allclose(layer(x), dense(x), atol=1e-5)


def test_width_reproduces_the_parameter_budget():
    # Given M (or L), the solved width is the one whose IGC block has exactly `params` weights.
    for L, M in [(24, 2), (8, 8), (64, 1), (4, 16)]:
        params = block_params(L, M)
        assert width(None, M, 3, params) == pytest.approx(L * M)
        assert width(L, None, 3, params) == pytest.approx(L * M)
        block = IGCConv(L * M, L * M, 3, primary_groups=L, secondary_groups=M)
        assert sum(p.numel() for p in block.parameters()) == params
    # The paper's width table at the budget of a regular 3x3 conv 64 wide (36,864 weights):
    # M = 1 (Xception-like) 187.6, M = 2 254.1, 4 318.7, 8 326.7, 16 232.5, 32 126.3, 64 (L = 1,
    # a regular conv) 63.9 — wider than the regular conv for every M > 1 short of 64, widest
    # near L = M·k² (M ≈ 6).
    table = {M: width(None, M, 3, 64 * 64 * 9) for M in (1, 2, 4, 8, 16, 32, 64)}
    expected = {1: 187.6, 2: 254.1, 4: 318.7, 8: 326.7, 16: 232.5, 32: 126.3, 64: 63.9}
    assert {M: round(w, 1) for M, w in table.items()} == expected
    best = max(range(1, 65), key=lambda M: width(None, M, 3, 64 * 64 * 9))
    assert best == 6 and width(None, best, 3, 64 * 64 * 9) / best == pytest.approx(9 * best, rel=0.1)


def test_igc_resnet_exports_exactly_as_grouped_convs(tmp_path):
    torch.manual_seed(0)
    model = _as_trained(create_model("igc_resnet", depth=8, primary_groups=4, secondary_groups=2), 0)
    x = torch.randn(2, 3, 16, 16)
    deployed = condense(model, x)
    with torch.no_grad():
        y = model(x)
        assert (deployed(x) - y).abs().max() <= 1e-5 * y.abs().max()
    ops = onnx_ops(deployed, x, tmp_path / "igc.onnx")
    dense = onnx_ops(dense_equivalent(model), x, tmp_path / "dense.onnx")
    igc_layers = sum(isinstance(m, IGCConv) for m in model.modules())
    assert not FORBIDDEN & set(ops), ops
    # Two grouped convs per IGC layer; at most the two permutations per layer as Gathers (the
    # partitions are orthogonal, so none can become a weight permutation), fewer where they fold.
    assert ops["Conv"] == dense["Conv"] + igc_layers, (ops, dense)
    assert ops["ChannelGather"] <= 2 * igc_layers, ops
    assert ops["BatchNormalization"] == 0  # every BatchNorm folded into the conv before it
