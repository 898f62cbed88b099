"""Channel reorders keep channels-last tensors channels-last, and deployed layers built on them
compute the same function (forward and gradients) in both memory formats."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learnsparse.layers import IndexSelectGroupConv, LearnedGroupConv
from learnsparse.layers.channel_ops import channel_shuffle, select_channels
from learnsparse.layers.connectivity_conv import ConnectivityConv, from_connectivity

from .test_connectivity import _permuted_blocks

CL = torch.channels_last


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.integers(0, 10_000))
def test_reorders_equal_the_plain_ops_and_keep_the_layout(batch, groups, per_group, size, seed):
    g = torch.Generator().manual_seed(seed)
    c = groups * per_group
    x = torch.randn(batch, c, size, size + 1, generator=g)
    index = torch.randint(0, c, (c + 2,), generator=g)
    shuffled = x.view(batch, groups, per_group, size, size + 1).transpose(1, 2).reshape(x.shape)
    for fmt in (torch.contiguous_format, CL):
        y = x.contiguous(memory_format=fmt)
        assert torch.equal(select_channels(y, index), x.index_select(1, index))
        assert torch.equal(channel_shuffle(y, groups), shuffled)
        if fmt is CL and size > 1 and c > 1:  # else the input is contiguous in both layouts
            assert select_channels(y, index).is_contiguous(memory_format=CL)
            assert channel_shuffle(y, groups).is_contiguous(memory_format=CL)


def _same_in_both_formats(layer, x):
    layer_cl = layer.to(memory_format=CL)
    outs, grads = [], []
    for fmt in (torch.contiguous_format, CL):
        inp = x.detach().contiguous(memory_format=fmt).requires_grad_(True)
        layer.zero_grad()
        out = layer_cl(inp) if fmt is CL else layer(inp)
        if fmt is CL:
            assert out.is_contiguous(memory_format=CL)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([inp.grad, *(p.grad.clone() for p in layer.parameters())])
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=2, max_size=4), st.integers(0, 10_000),
       st.sampled_from(["padded", "split"]))
def test_permuted_group_conv_is_layout_independent(sizes, seed, layout):
    torch.manual_seed(seed)
    m = _permuted_blocks([o for o, _ in sizes], [i for _, i in sizes], seed)
    layer = ConnectivityConv(m.shape[1], m.shape[0], 3, m, padding=1)
    deployed = from_connectivity(layer.weight, layer.bias, m, layer.stride, layer.padding, layout)
    _same_in_both_formats(deployed, torch.randn(2, m.shape[1], 5, 5))


def test_index_select_group_conv_is_layout_independent():
    torch.manual_seed(0)
    lgc = LearnedGroupConv(16, 8, groups=4, condense_factor=4)
    lgc.condense_to(lgc.max_stage)
    _same_in_both_formats(IndexSelectGroupConv.from_trained(lgc), torch.randn(3, 16, 6, 6))
