"""Structure export: structured zeros become smaller layers, and the exported model computes
what the trained (masked) one does."""
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from learnsparse.core.counting import count_params, macs_by_module
from learnsparse.export import condense_with_details, load
from learnsparse.export.artifacts import save_condensed, save_pt2
from learnsparse.layers.lowered_conv import LoweredConv2d
from learnsparse.layers.shortcut_only import ShortcutOnly
from learnsparse.models import create_model

from .structured_zeros import place_structured_zeros, with_shape_sparse_conv

ARCHS = {  # name: (in_channels, input size)
    "lenet5": (1, 28), "resnet20": (3, 32), "resnet56": (3, 32), "resnet110": (3, 32), "vgg16_bn": (3, 32),
    "vgg19_bn": (3, 32), "densenet_bc_100": (3, 32), "tv_resnet18": (3, 64), "tv_resnet50": (3, 64),
    "tv_mobilenet_v2": (3, 64),
}


def _model(name, seed, **zeros):
    torch.manual_seed(seed)
    c, _ = ARCHS[name]
    return place_structured_zeros(create_model(name, num_classes=10, in_channels=c), seed, **zeros)


def _inputs(name, batch=3, seed=0):
    c, s = ARCHS[name]
    return torch.randn(batch, c, s, s, generator=torch.Generator().manual_seed(seed))


def _assert_equal(a: nn.Module, b: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    assert (ya - yb).abs().max() <= 1e-5 * ya.abs().max()


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("seed", [0, 1])
def test_every_architecture_exports_smaller_and_equal(name, seed):
    model = _model(name, seed)
    x = _inputs(name, seed=seed)
    result = condense_with_details(model, x)
    assert result.max_abs_diff <= 1e-5 * result.output_scale
    _assert_equal(model, result.model, _inputs(name, batch=2, seed=seed + 7))
    assert count_params(result.model) < count_params(model)
    single = x[:1]
    assert macs_by_module(result.model, single)[""] < macs_by_module(model, single)[""]


def test_dead_residual_branches_become_their_shortcut():
    model = _model("resnet20", 3, frac=0.0, branches=1.0)
    result = condense_with_details(model, _inputs("resnet20"))
    blocks = [m for m in result.model.modules() if isinstance(m, ShortcutOnly)]
    assert len(blocks) == 9  # every block of resnet20, including the two that change shape
    assert sum(isinstance(b.shortcut, nn.Sequential) and len(b.shortcut) > 0 for b in blocks) == 2


class _TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _two_convs():
    torch.manual_seed(0)
    m = _TwoConvs().eval()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.bias.uniform_(0.1, 0.5)  # every constant β − γμ/σ differs from zero
    return m


def test_zero_filter_whose_batchnorm_adds_a_constant_is_kept():
    m = _two_convs()
    with torch.no_grad():
        m.conv1.weight[[1, 4]] = 0  # BN turns these into constants, which the padded conv2 reads
        m.bn1.weight[4], m.bn1.bias[4] = 0, 0  # ... except channel 4, killed with its BN
    result = condense_with_details(m, torch.randn(2, 3, 9, 9))
    assert result.model.conv1.out_channels == 7 and result.model.conv2.in_channels == 7


def test_constant_channels_fold_into_linear_and_unpadded_1x1_readers(tmp_path):
    m = _two_convs()
    m.conv2 = nn.Conv2d(8, 8, 1, bias=False)  # unpadded 1x1: a constant input folds into its bias
    with torch.no_grad():
        m.conv1.weight[[1, 4]] = 0  # constants β − γμ/σ (after ReLU) read by the 1x1
        m.conv2.weight[[0, 6]] = 0  # constants read by the linear layer after pooling
    x = torch.randn(2, 3, 9, 9)
    result = condense_with_details(m, x)
    assert result.model.conv1.out_channels == 6 and result.model.conv2.in_channels == 6
    assert result.model.conv2.out_channels == 6 and result.model.fc.in_features == 6
    assert result.model.conv2.bias is not None and result.pass_edits["bias_added"] == ["conv2"]
    _assert_equal(m, result.model, torch.randn(3, 3, 9, 9))


def test_zero_filter_with_bias_folds_into_an_unpadded_conv():
    model = _model("lenet5", 0, frac=0.0)
    conv1 = model.features[0]
    with torch.no_grad():
        conv1.weight[[2, 7, 11]] = 0  # bias stays: the channel is the constant relu(b), max-pooled
        conv1.bias[2] = -1.0          # ... and 0 after the ReLU for this one
    result = condense_with_details(model, _inputs("lenet5"))
    assert result.model.features[0].out_channels == 17 and result.model.features[3].in_channels == 17
    _assert_equal(model, result.model, _inputs("lenet5", seed=3))


def test_inputs_nobody_reads_remove_the_filters_that_fed_them():
    m = _two_convs()
    with torch.no_grad():
        m.conv2.weight[:, [0, 2, 5]] = 0
        m.fc.weight[:, 3] = 0
    result = condense_with_details(m, torch.randn(2, 3, 9, 9))
    assert result.model.conv1.out_channels == 5
    assert result.model.conv2.out_channels == 7 and result.model.fc.in_features == 7


def test_logits_are_never_removed():
    m = _two_convs()
    with torch.no_grad():
        m.fc.weight[2] = 0
        m.fc.bias[2] = 0
    result = condense_with_details(m, torch.randn(2, 3, 9, 9))
    assert result.model.fc.out_features == 5


def test_a_residual_channel_stays_while_any_branch_writes_it():
    model = _model("resnet20", 0, frac=0.0, branches=0.0)
    with torch.no_grad():  # channel 3 of stage 1: killed in every block's branch, alive in the stem
        for block in model.layer1:
            block.bn2.weight[3], block.bn2.bias[3] = 0, 0
    result = condense_with_details(model, _inputs("resnet20"))
    assert result.model.layer1[0].conv2.out_channels == 16
    with torch.no_grad():
        model.bn1.weight[3], model.bn1.bias[3] = 0, 0  # ... and in the stem: now it can go
    result = condense_with_details(model, _inputs("resnet20"))
    assert result.model.layer1[0].conv2.out_channels == 15 and result.model.conv1.out_channels == 15


@settings(max_examples=40, deadline=None)
@given(cin=st.integers(1, 9), cout=st.integers(1, 9), k=st.sampled_from([1, 2, 3, 5]), stride=st.integers(1, 3),
       padding=st.integers(0, 2), size=st.integers(5, 12), kept=st.floats(0.0, 1.0), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_lowered_conv_equals_the_conv(cin, cout, k, stride, padding, size, kept, bias, seed):
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride, padding, bias=bias)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape[1:], generator=g) < kept)
    x = torch.randn(2, cin, size, size, generator=g)
    lowered = LoweredConv2d.from_conv(conv)
    with torch.no_grad():
        a, b = conv(x), lowered(x)
    assert a.shape == b.shape
    assert (a - b).abs().max() <= 1e-5 * max(1.0, float(a.abs().max()))


def test_shape_sparse_convs_are_lowered_and_counted():
    model = with_shape_sparse_conv(_model("lenet5", 0, frac=0.0), kept=0.05, seed=0)
    x = _inputs("lenet5")
    result = condense_with_details(model, x)
    assert sum(isinstance(m, LoweredConv2d) for m in result.model.modules()) == 2
    assert macs_by_module(result.model, x[:1])[""] < 0.5 * macs_by_module(model, x[:1])[""]


@pytest.mark.parametrize("name", ["resnet20", "lenet5", "tv_mobilenet_v2"])
def test_condensed_file_and_pt2_rebuild_the_structure(tmp_path, name):
    model = _model(name, 5)
    if name == "lenet5":
        with_shape_sparse_conv(model, kept=0.05, seed=5)
    x = _inputs(name)
    result = condense_with_details(model, x)
    c, s = ARCHS[name]
    spec = {"_target_": "learnsparse.models.create_model", "name": name, "num_classes": 10, "in_channels": c}
    save_condensed(tmp_path / "condensed.pt", result.model, spec, [c, s, s])
    rebuilt = load(tmp_path / "condensed.pt")
    _assert_equal(result.model, rebuilt, x)
    assert count_params(rebuilt) == count_params(result.model)
    save_pt2(result.model, x, tmp_path / "model.pt2")
    program = torch.export.load(str(tmp_path / "model.pt2"))
    _assert_equal(result.model, program.module(), torch.cat([x, x]))


@pytest.mark.parametrize("name", ["resnet20", "tv_mobilenet_v2", "vgg16_bn"])
def test_batchnorms_after_convs_fold_into_them(name):
    model = _model(name, 3)
    x = _inputs(name)
    result = condense_with_details(model, x)
    # These nets are conv → BN throughout: every BatchNorm left after the structure passes
    # (dead branches take theirs along) is folded.
    assert len(result.pass_edits["batchnorm_folded"]) > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    _assert_equal(model, result.model, _inputs(name, batch=2, seed=11))


def test_preactivation_batchnorms_are_kept():
    # DenseNet's BN → ReLU → conv: the ReLU between makes folding into the conv inexact.
    model = _model("densenet_bc_100", 0)
    result = condense_with_details(model, _inputs("densenet_bc_100"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())


def test_export_runs_channels_last_for_eager_or_when_asked():
    model = _model("resnet20", 0)
    x = _inputs("resnet20")
    nhwc = condense_with_details(model, x, channels_last=True).model
    nchw = condense_with_details(model, x).model  # no target: plain weights, as graphs want them
    conv = next(m for m in nhwc.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert next(m for m in nchw.modules() if isinstance(m, nn.Conv2d)).weight.is_contiguous()
    eager = condense_with_details(model, x, target="eager").model
    assert next(m for m in eager.modules() if isinstance(m, nn.Conv2d)).weight.is_contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():  # an NCHW input still runs NHWC from the first conv on
        assert nhwc.conv1(x).is_contiguous(memory_format=torch.channels_last)
    _assert_equal(nchw, nhwc, x)
