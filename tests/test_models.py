import pytest
import torch

from learnsparse.core.errors import UserError
from learnsparse.models import create_model, list_models

CORE = ["lenet5", "resnet20", "resnet32", "resnet56", "resnet110", "vgg16_bn", "vgg19_bn", "densenet_bc_100",
        "tv_resnet18", "tv_resnet50", "tv_mobilenet_v2"]


def test_registry_lists_every_issue_model():
    assert set(CORE) <= set(list_models())


@pytest.mark.parametrize("name", CORE)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_model_builds_and_maps_images_to_logits(name, in_channels):
    model = create_model(name, num_classes=7, in_channels=in_channels).eval()
    size = 32 if not name.startswith("tv_") else 64
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_lenet5_matches_ssl_layer_shapes():
    m = create_model("lenet5", num_classes=10, in_channels=1)
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    fcs = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(20, (5, 5)), (50, (5, 5))]
    assert [f.out_features for f in fcs] == [500, 10]


def test_resnet_depths_have_6n_plus_2_layers():
    for depth in (20, 32, 56, 110):
        m = create_model(f"resnet{depth}")
        convs = [x for n, x in m.named_modules() if isinstance(x, torch.nn.Conv2d) and "shortcut" not in n]
        assert len(convs) + 1 == depth  # + the final linear layer


def test_unknown_model_names_close_matches():
    with pytest.raises(UserError, match="resnet20"):
        create_model("resnet2O")


def test_cifar_resnet_widths_set_every_stage():
    from learnsparse.models.resnet_cifar import CifarResNet

    thin, full = CifarResNet(20, widths=(8, 16, 32)), CifarResNet(20)
    thin_out = [m.out_channels for m in thin.modules() if isinstance(m, torch.nn.Conv2d)]
    full_out = [m.out_channels for m in full.modules() if isinstance(m, torch.nn.Conv2d)]
    assert thin_out == [c // 2 for c in full_out]
    assert thin(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="widths"):
        CifarResNet(20, widths=(8, 16))
