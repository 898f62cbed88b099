"""torchvision classifiers under `tv_<name>`, built without pretrained weights (offline-safe)."""
import functools

import torch.nn as nn
import torchvision

from .registry import _MODELS

# The architectures export and sparsify are tested on; any other torchvision classifier is
# reachable too, because every name in torchvision's classification registry is added below.
_TESTED = ("resnet18", "resnet50", "mobilenet_v2")


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(parent, name, nn.Conv2d(
                        in_channels, child.out_channels, child.kernel_size, child.stride,
                        child.padding, child.dilation, child.groups, child.bias is not None))
                return


def _build(tv_name: str, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


for _name in sorted(set(torchvision.models.list_models(module=torchvision.models)) | set(_TESTED)):
    _builder = functools.partial(_build, _name)
    _builder.__name__ = f"tv_{_name}"
    _MODELS[f"tv_{_name}"] = _builder
