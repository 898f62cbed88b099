import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learnsparse.layers import IndexSelectGroupConv, LearnedGroupConv


def _randomize(layer: LearnedGroupConv, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.conv.weight.copy_(torch.randn(layer.conv.weight.shape, generator=g))


def test_each_stage_drops_in_over_c_inputs_per_group_by_smallest_l1():
    layer = LearnedGroupConv(16, 8, groups=2, condense_factor=4)
    _randomize(layer, 0)
    norms = layer.group_norms(p=1)
    assert layer.condense_to(1) == 1
    for gi in range(2):
        dropped = (layer.mask[gi] == 0).nonzero().flatten()
        assert len(dropped) == 4
        assert set(dropped.tolist()) == set(norms[gi].argsort()[:4].tolist())
    layer.condense_to(3)
    assert int(layer.stage) == 3
    assert (layer.mask.sum(1) == 16 - 3 * 4).all()


def test_filter_o_belongs_to_group_o_mod_g():
    layer = LearnedGroupConv(8, 6, groups=3, condense_factor=2)
    _randomize(layer, 1)
    layer.condense_to(1)
    fm = layer.filter_mask()
    for o in range(6):
        assert torch.equal(fm[o], layer.mask[o % 3])
    w = layer.masked_weight()
    assert ((w != 0).any(dim=(2, 3)).float() <= fm).all()


def test_kxk_kernels_are_masked_whole():
    layer = LearnedGroupConv(8, 4, kernel_size=3, padding=1, groups=2, condense_factor=4)
    _randomize(layer, 2)
    layer.condense_to(3)
    w = layer.masked_weight()
    zero = (w == 0).all(dim=(2, 3))
    assert torch.equal(zero, layer.filter_mask() == 0)


def test_dropped_inputs_stop_mattering_and_are_never_picked_twice():
    layer = LearnedGroupConv(12, 4, groups=2, condense_factor=3)
    _randomize(layer, 3)
    layer.condense_to(2)
    assert (layer.mask.sum(1) == 12 - 2 * 4).all()
    x = torch.randn(2, 12, 5, 5)
    x2 = x.clone()
    unused = (layer.mask.sum(0) == 0).nonzero().flatten()
    x2[:, unused] = 1e3
    assert torch.allclose(layer(x), layer(x2))


def test_bad_shapes_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="multiple of groups"):
        LearnedGroupConv(16, 6, groups=4)
    with pytest.raises(ValueError, match="condense_factor"):
        LearnedGroupConv(3, 8, groups=4, condense_factor=4)
    with pytest.raises(ValueError, match="stage must be"):
        LearnedGroupConv(8, 8).condense_to(4)


def test_group_lasso_is_the_sum_of_group_column_l2_norms():
    layer = LearnedGroupConv(4, 4, groups=2, condense_factor=2)
    _randomize(layer, 4)
    w = layer.conv.weight.detach()[:, :, 0, 0]
    expected = sum(w[gi::2, c].norm() for gi in range(2) for c in range(4))
    assert torch.allclose(layer.group_lasso(), expected)
    layer.group_lasso().backward()
    assert layer.conv.weight.grad is not None


@settings(max_examples=60, deadline=None)
@given(in_channels=st.integers(2, 40), groups=st.sampled_from([1, 2, 3, 4, 8]), per_group=st.integers(1, 5),
       condense_factor=st.integers(1, 8), kernel=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       bias=st.booleans(), stage_frac=st.floats(0, 1), seed=st.integers(0, 10**6))
def test_export_equals_trained_on_random_shapes_and_stages(in_channels, groups, per_group, condense_factor, kernel,
                                                          stride, bias, stage_frac, seed):
    if in_channels < condense_factor:
        return
    layer = LearnedGroupConv(in_channels, groups * per_group, kernel, stride, kernel // 2, groups=groups,
                             condense_factor=condense_factor, bias=bias).eval()
    _randomize(layer, seed)
    layer.condense_to(round(stage_frac * layer.max_stage))
    deployed = IndexSelectGroupConv.from_trained(layer).eval()
    x = torch.randn(3, in_channels, 7, 7, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a, b = layer(x), deployed(x)
    assert a.shape == b.shape
    assert (a - b).abs().max() <= 1e-5 * max(a.abs().max().item(), 1e-6)
    assert deployed.conv.weight.shape[1] == layer.kept_per_group()
