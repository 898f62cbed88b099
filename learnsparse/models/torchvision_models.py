"""torchvision classifiers under `tv_<name>`: random weights by default (offline-safe), or
torchvision's pretrained ones with `weights=DEFAULT` (or any name its weights enum knows,
e.g. `IMAGENET1K_V1`), which torchvision downloads once into its cache ($TORCH_HOME).

With pretrained weights, a `num_classes` other than the weights' gets a new, randomly
initialised head, and `in_channels` other than 3 a first conv whose weights are the RGB
filters folded onto the new channels (a grey image then gives what its RGB copy gave).
"""
import functools
import logging

import torch
import torch.nn as nn
import torchvision

from learnsparse.core.errors import UserError

from .registry import _MODELS

log = logging.getLogger("learnsparse")

# The architectures export and sparsify are tested on; any other torchvision classifier is
# reachable too, because every name in torchvision's classification registry is added below.
_TESTED = ("resnet18", "resnet50", "mobilenet_v2")


def fold_rgb(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first-conv weight over RGB made to take `in_channels` inputs: each new channel gets
    the RGB sum divided by their number, so a grey image copied to every channel gives the
    response its RGB copy gave."""
    return weight.sum(1, keepdim=True).div(in_channels).expand(-1, in_channels, -1, -1).clone()


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def output_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The layer that owns the model's last parameter: its classifier in torchvision's models
    and in most models of one's own (fc, classifier.6, heads.head, ...)."""
    names = [n for n, _ in model.named_parameters()]
    if not names:
        return None
    owner = names[-1].rpartition(".")[0]
    return owner, model.get_submodule(owner)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def new_head(model: nn.Module, num_classes: int) -> str:
    """Replace the classifier by a fresh one with `num_classes` outputs; returns its name."""
    found = output_layer(model)
    if found is None or not isinstance(found[1], (nn.Linear, nn.Conv2d)):
        raise UserError(f"cannot give this model a {num_classes}-class head: its last layer "
                        f"{found[0] if found else '(none)'} is not a Linear or Conv2d")
    name, old = found
    if isinstance(old, nn.Linear):
        head = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        head = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, old.dilation,
                         old.groups, old.bias is not None)
    _set(model, name, head)
    return name


def _replace_first_conv(model: nn.Module, in_channels: int, keep_weights: bool = False) -> None:
    found = first_conv(model)
    if found is None or found[1].in_channels == in_channels:
        return
    name, child = found
    conv = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                     child.dilation, child.groups, child.bias is not None)
    if keep_weights and child.groups == 1:
        with torch.no_grad():
            conv.weight.copy_(fold_rgb(child.weight, in_channels))
            if child.bias is not None:
                conv.bias.copy_(child.bias)
    _set(model, name, conv)


def _pretrained(tv_name: str, weights: str) -> nn.Module:
    try:
        enum = torchvision.models.get_model_weights(tv_name)
        chosen = enum.verify(weights)
    except (ValueError, KeyError) as e:
        names = ["DEFAULT"] + [w.name for w in torchvision.models.get_model_weights(tv_name)]
        raise UserError(f"model.weights={weights}: tv_{tv_name} has no such weights; choose from "
                        f"{', '.join(names)}") from e
    try:
        return torchvision.models.get_model(tv_name, weights=chosen)
    except OSError as e:  # offline, or the download was cut
        raise UserError(f"model.weights={weights}: cannot fetch tv_{tv_name}'s {chosen} weights ({e}); "
                        f"on an offline machine put the file in torchvision's cache "
                        f"({torch.hub.get_dir()}/checkpoints)") from e


def _build(tv_name: str, num_classes: int = 1000, in_channels: int = 3, weights: str | None = None) -> nn.Module:
    if weights is None:
        model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)
    else:
        model = _pretrained(tv_name, str(weights))
        trained_classes = output_layer(model)[1].weight.shape[0]
        if trained_classes != num_classes:
            name = new_head(model, num_classes)
            log.info("tv_%s: new head %s for %d classes (the %s weights have %d); it starts untrained",
                     tv_name, name, num_classes, weights, trained_classes)
    if in_channels != 3:
        _replace_first_conv(model, in_channels, keep_weights=weights is not None)
    return model


for _name in sorted(set(torchvision.models.list_models(module=torchvision.models)) | set(_TESTED)):
    _builder = functools.partial(_build, _name)
    _builder.__name__ = f"tv_{_name}"
    _MODELS[f"tv_{_name}"] = _builder
