import copy

import pytest
import torch

from learnsparse.core.counting import count_params, macs_by_module
from learnsparse.export import ExportMismatchError, condense, condense_with_details, register_converter
from learnsparse.layers import LearnedGroupConv
from learnsparse.layers.condensed_dense_block import CondensedDenseBlock
from learnsparse.layers.dense_block import DenseLayer
from learnsparse.models import create_model


def _trained(name: str, stage: int | None = None, seed: int = 0, **kw):
    """A model with random weights and BN statistics, condensed to `stage` (default: last)."""
    torch.manual_seed(seed)
    model = create_model(name, **kw).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, LearnedGroupConv):
                m.condense_to(m.max_stage if stage is None else stage)
    return model


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("batch", [1, 5])
def test_condensenet_export_equals_trained_at_every_stage(stage, batch):
    model = _trained("condensenet_mini", stage, seed=stage, in_channels=1)
    x = torch.randn(batch, 1, 28, 28)
    result = condense_with_details(model, x)
    assert any(isinstance(m, CondensedDenseBlock) for m in result.model.modules())
    assert not any(isinstance(m, LearnedGroupConv) for m in result.model.modules())
    with torch.no_grad():
        a, b = model(x), result.model(x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    assert result.max_abs_diff <= 1e-5 * result.output_scale


def test_export_leaves_the_trained_model_untouched():
    model = _trained("condensenet_mini", in_channels=1)
    before = copy.deepcopy(model.state_dict())
    condense(model, torch.randn(2, 1, 28, 28))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_channels_last_input_gives_the_same_outputs():
    model = _trained("condensenet_mini", in_channels=1)
    x = torch.randn(3, 1, 28, 28)
    exported = condense(model, x)
    with torch.no_grad():
        assert torch.allclose(exported(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-5)


@pytest.mark.parametrize("name, size, num_classes, macs, params", [
    ("condensenet86", 32, 10, 62_381_888, 520_202),
    ("condensenet74_c4", 224, 1000, 517_672_576, 5_805_944),
    ("condensenet74_c8", 224, 1000, 262_577_792, 3_967_416),
])
def test_exported_models_match_the_reference_structure(name, size, num_classes, macs, params):
    model = _trained(name, num_classes=num_classes)
    x = torch.randn(1, 3, size, size)
    exported = condense(model, x)
    assert macs_by_module(exported, x)[""] == macs
    # The reference keeps each layer's second BatchNorm (γ, β per channel); here it folds into
    # the grouped 1x1 conv, which gains a bias (one per channel) instead.
    folded = sum(m.norm2.num_features for m in model.modules() if isinstance(m, DenseLayer))
    assert count_params(exported) == params - folded


def test_classifier_keep_reproduces_the_reference_lossy_export():
    model = _trained("condensenet74_c4", num_classes=1000)
    x = torch.randn(1, 3, 224, 224)
    result = condense_with_details(model, x, classifier_keep=0.5)
    folded = sum(m.norm2.num_features for m in model.modules() if isinstance(m, DenseLayer))  # as above
    assert count_params(result.model) == 5_805_944 - 1_032_000 - folded
    assert not result.exact and result.max_abs_diff > 0


class _Broken(torch.nn.Module):
    def forward(self, x):
        return x * 2


@register_converter(_Broken)
def _convert_broken(module):
    return torch.nn.Identity()  # wrong on purpose


def test_a_wrong_conversion_fails_loudly():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), _Broken())
    with pytest.raises(ExportMismatchError, match="differs from the trained one"):
        condense(model, torch.randn(2, 3, 8, 8))


def test_fused_inference_path_equals_the_plain_ops_and_follows_new_weights():
    # No grad: the dense blocks take the fused gather/BatchNorm/matmul path; with autograd on,
    # the plain ops. Both must agree, at every batch size, and after the weights change in
    # place (the fused path caches its operands).
    deployed = condense(_trained("condensenet_mini", in_channels=1), torch.randn(2, 1, 28, 28))
    for batch in (1, 3, 1):
        x = torch.randn(batch, 1, 28, 28)
        with torch.no_grad():
            fused = deployed(x)
        plain = deployed(x).detach()
        assert (fused - plain).abs().max() <= 1e-5 * plain.abs().max()
    with torch.no_grad():
        for m in deployed.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.3)
                m.bias.mul_(-1)
        for p in deployed.parameters():
            if p.dim() == 3:  # the 1x1 layers' [G, out/G, in/G] weights
                p.mul_(1.5)
        fused = deployed(x)
    plain = deployed(x).detach()
    assert (fused - plain).abs().max() <= 1e-5 * plain.abs().max()
