"""Regularizer plugins: group norms, the two optimization modes, layer choice, loss terms."""
import types

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from learnsparse.models import create_model
from learnsparse.sparsity.groups import KINDS, group_norms
from learnsparse.sparsity.regularizers import BNSlimming, GroupLasso, GroupPenalty, L1, SSLDepth, SSLFilterChannel

SLICES = {  # kind → the groups of a 4-D weight, as index tuples over (n, c, i, j)
    "filter": lambda w: [(n,) for n in range(w.shape[0])],
    "channel": lambda w: [(slice(None), c) for c in range(w.shape[1])],
    "shape": lambda w: [(slice(None), c, i, j) for c in range(w.shape[1]) for i in range(w.shape[2])
                        for j in range(w.shape[3])],
    "kernel2d": lambda w: [(n, c) for n in range(w.shape[0]) for c in range(w.shape[1])],
    "layer": lambda w: [()],
    "element": lambda w: [(n, c, i, j) for n in range(w.shape[0]) for c in range(w.shape[1])
                          for i in range(w.shape[2]) for j in range(w.shape[3])],
}


@settings(max_examples=30, deadline=None)
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
       kind=st.sampled_from(KINDS), seed=st.integers(0, 999))
def test_group_norms_equal_a_loop_over_groups(shape, kind, seed):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    norms = group_norms(w, kind)
    expected = sorted(float(w[idx].norm()) for idx in SLICES[kind](w))
    assert sorted(norms.flatten().tolist()) == pytest.approx(expected, rel=1e-5)
    assert norms.expand_as(w).shape == w.shape  # broadcasts back onto the weight


def _attach(hook: GroupPenalty, lr: float = 0.1, progress: float = 0.0):
    params = list({id(w): w for _, w, _ in hook.terms}.values())
    opt = torch.optim.SGD(params, lr=lr)
    hook.trainer = types.SimpleNamespace(optimizer=opt, progress=progress)
    hook.before_train()
    return opt


def test_subgradient_adds_the_penalty_gradient_and_nothing_on_zero_groups():
    conv = nn.Conv2d(4, 6, 3)
    with torch.no_grad():
        conv.weight[2] = 0  # a dead filter: its subgradient is 0, not NaN
    model = nn.Sequential(conv)
    hook = GroupLasso(model, strength=0.3, kinds=["filter", "channel"])
    _attach(hook)
    terms = hook.extra_losses()
    reference = conv.weight.detach().clone().requires_grad_()
    penalty = 0.3 * (group_norms(reference, "filter").sum() + group_norms(reference, "channel").sum())
    assert float(terms["loss_reg_GroupLasso"]) == pytest.approx(float(penalty.detach()), rel=1e-5)
    penalty.backward()
    conv.weight.grad = torch.ones_like(conv.weight)
    hook.after_backward()
    live = torch.ones(6, dtype=torch.bool)
    live[2] = False
    expected = 1 + reference.grad
    # autograd's gradient on the dead filter comes only from the channel groups; SSL's rule adds
    # 0 for the dead filter group, which is what ours must do there as well.
    assert torch.allclose(conv.weight.grad[live], expected[live], atol=1e-6)
    channel_only = 0.3 * conv.weight.detach() / group_norms(conv.weight.detach(), "channel")
    assert torch.allclose(conv.weight.grad[2], 1 + channel_only[2])
    assert torch.isfinite(conv.weight.grad).all()


def test_proximal_step_gives_exact_zeros_below_lr_times_strength():
    conv = nn.Conv2d(3, 8, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(0.01, 1, 8)[:, None, None, None].expand(8, 3, 1, 1) / 3 ** 0.5)
    norms_before = group_norms(conv.weight.detach(), "filter").flatten()
    hook = GroupLasso(nn.Sequential(conv), strength=2.0, kinds=["filter"], mode="proximal")
    _attach(hook, lr=0.1)  # threshold lr·λ = 0.2
    hook.extra_losses()
    hook.after_backward()
    hook.after_step()
    after = group_norms(conv.weight.detach(), "filter").flatten()
    small = norms_before <= 0.2
    assert (after[small] == 0).all() and small.any()
    assert torch.allclose(after[~small], norms_before[~small] - 0.2, atol=1e-6)


def test_l1_proximal_is_soft_thresholding():
    lin = nn.Linear(5, 4)
    before = lin.weight.detach().clone()
    hook = L1(nn.Sequential(lin), strength=1.0, mode="proximal", layers="linear")
    _attach(hook, lr=0.2)
    hook.extra_losses()
    hook.after_backward()
    hook.after_step()
    assert torch.allclose(lin.weight, before.sign() * (before.abs() - 0.2).clamp_min(0), atol=1e-7)


def test_penalty_stops_at_until():
    hook = L1(nn.Sequential(nn.Conv2d(2, 2, 3)), strength=1.0, until=0.5)
    _attach(hook, progress=0.6)
    assert hook.extra_losses() == {}


def test_layer_choice_by_patterns_and_presets():
    model = create_model("resnet20", num_classes=10, in_channels=3)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len({n for n, _, _ in GroupLasso(model).terms}) == len(convs)
    chosen = {n for n, _, _ in GroupLasso(model, include=["layer3.*"], exclude_shortcuts=True).terms}
    assert chosen and all(n.startswith("layer3.") and "shortcut" not in n for n in chosen)
    depth = SSLDepth(model).terms
    assert len(depth) == 18 and all(k == "layer" and "shortcut" not in n for n, _, k in depth)
    fc = SSLFilterChannel(model).terms
    assert ("conv1", "channel") not in {(n, k) for n, _, k in fc}  # the image's channels stay
    assert len(fc) == 2 * len(convs) - 1
    tv = create_model("tv_resnet18", num_classes=10, in_channels=3)
    assert len(SSLDepth(tv).terms) == 16


def test_bn_slimming_penalizes_gammas_and_sets_their_start():
    model = create_model("vgg16_bn", num_classes=10, in_channels=3)
    hook = BNSlimming(model, gamma_init=0.5)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(hook.terms) == len(bns) and all(k == "element" for _, _, k in hook.terms)
    assert all(bool((m.weight == 0.5).all()) for m in bns)


@pytest.mark.parametrize("bad", [dict(strength=-1.0), dict(mode="newton"), dict(until=0.0),
                                 dict(kinds=["rows"]), dict(include=["nothing.*"])])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        GroupLasso(create_model("lenet5", num_classes=10, in_channels=1), **bad)
