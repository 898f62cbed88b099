"""The benchmark networks several scripts time: each case is a trained model at its end state
(random weights, then the structure its method reaches), its input, its batch, its
fixed-structure twin where one exists, and its deployment goals.

Imported by scripts/bench_deploy.py, bench_structure_floor.py, profile_graph.py and
bench_export.py, run as `python scripts/<name>.py` (the scripts folder is then on the path).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from learnsparse.layers.end_state import at_end_state
from learnsparse.models import create_model
from learnsparse.models.condensenet import CondenseNet, _cifar, _imagenet
from learnsparse.sparsity.learned_grouping import sparsify

INPUT = {"condensenet_mini": (1, 28), "condensenet74_c4": (3, 224), "condensenet74_c8": (3, 224)}


def trained_model(name: str, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, every learned group conv condensed to its last stage."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=1000 if "c4" in name or "c8" in name else 10,
                         in_channels=INPUT.get(name, (3, 32))[0]).eval()
    return at_end_state(model)


def flgc_model(name: str, groups: int, include: list[str], balanced: bool, in_channels: int,
               seed: int = 0) -> nn.Module:
    """A model whose matching convs are FLGConv with random (frozen) assignments."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_channels=in_channels).eval()
    sparsify(model, "flgc", groups=groups, include=include, balanced=balanced)
    return at_end_state(model)


@dataclass
class Case:
    name: str
    trained: nn.Module
    input_shape: tuple[int, ...]
    batch: int
    twin: nn.Module | None = None
    goals: list = field(default_factory=list)  # (label, function of the result table → (value, goal))


def condensenet86(batch: int) -> Case:
    trained = trained_model("condensenet86")
    twin = CondenseNet(_cifar(86, conv1="fixed"), 10, 3)  # plain Conv2d(groups=4) 1x1s, no gathers
    goal = 1.25 if batch > 1 else 1.1
    return Case(f"condensenet86_b{batch}", trained, (3, 32, 32), batch, as_if_trained(twin),
                [(f"(b) best export / best dense ≥ {goal}", lambda r: (r.best("export") / r.best("dense"), goal))])


def condensenet74_c4(batch: int) -> Case:
    """CondenseNet-74 for ImageNet with C = G = 4, at 224x224."""
    trained = trained_model("condensenet74_c4")
    twin = CondenseNet(dataclasses.replace(_imagenet(4), conv1="fixed"), 1000, 3)
    return Case(f"condensenet74_c4_224_b{batch}", trained, (3, 224, 224), batch, as_if_trained(twin))


def resnet18_flgc(balanced: bool, size: int, batch: int) -> Case:
    trained = flgc_model("tv_resnet18", 4, ["layer*.conv*"], balanced, 3)
    twin = grouped_twin(create_model("tv_resnet18", num_classes=10, in_channels=3), "layer", 4)
    goal = 0.9 if balanced else 0.75
    kind = "balanced" if balanced else "uneven"
    return Case(f"resnet18_flgc_{kind}_{size}_b{batch}", trained, (3, size, size), batch, as_if_trained(twin),
                [(f"(c) export in the twin's best runtime / twin ≥ {goal}",
                  lambda r: (r.export_in_twins_best_runtime(), goal))])


def lenet5_ssl(batch: int) -> Case:
    """LeNet-5 with the structure SSL learned on Fashion-MNIST (docs/benchmarks.md): conv1 keeps
    7 of 20 filters, conv2 34 of 50 filters on those 7 channels; fc1 then reads 544 of 800."""
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        conv1, conv2 = model.features[0], model.features[3]
        conv1.weight[7:] = 0
        conv1.bias[7:] = 0
        conv2.weight[34:] = 0
        conv2.bias[34:] = 0
        conv2.weight[:, 7:] = 0
    return Case(f"lenet5_ssl_b{batch}", model, (1, 28, 28), batch,
                goals=[("(d) best export / best dense ≥ 2.0", lambda r: (r.best("export") / r.best("dense"), 2.0))])


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    modules = list(model.modules())
    return [(c, b) for c, b in zip(modules, modules[1:]) if isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)]


def dead_channels(name: str, batch: int, frac: float = 0.5) -> Case:
    """Half of every conv's filters dead (weights and their BatchNorm's γ, β zero)."""
    torch.manual_seed(0)
    model = as_if_trained(create_model(name, num_classes=10, in_channels=3))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv, bn in _conv_bn_pairs(model):
            dead = torch.rand(conv.out_channels, generator=g) < frac
            conv.weight[dead] = 0
            bn.weight[dead] = 0
            bn.bias[dead] = 0
    return Case(f"{name}_dead{int(frac * 100)}_b{batch}", model, (3, 32, 32), batch)


def odd_widths(name: str, method: str, batch: int, keep: float = 0.45) -> Case:
    """The end state of network slimming (`slim`: BatchNorm γ and β zero) or SSL filter sparsity
    (`ssl`: whole filters zero, with their BatchNorm killed by the freeze step) that keeps an odd
    number of each conv's channels, about `keep` of them (20, 18, 37, 47 and 100 of 64…512 in
    one user's VGG): widths no kernel is tuned for. In a ResNet the residual stream is shared
    by every block of a stage, so only the channels inside blocks go."""
    torch.manual_seed(0)
    model = as_if_trained(create_model(name, num_classes=10, in_channels=3))
    g = torch.Generator().manual_seed(0)
    names = {m: n for n, m in model.named_modules()}
    with torch.no_grad():
        for conv, bn in _conv_bn_pairs(model):
            if "resnet" in name and not (names[conv].startswith("layer") and names[conv].endswith("conv1")):
                continue  # the residual stream
            kept = max(1, round(keep * conv.out_channels)) | 1  # odd
            dead = torch.randperm(conv.out_channels, generator=g)[kept:]
            if method == "ssl":
                conv.weight[dead] = 0
            bn.weight[dead] = 0
            bn.bias[dead] = 0
    return Case(f"{name}_{method}_odd_b{batch}", model, (3, 32, 32), batch,
                goals=[("(f) thinned export / dense ≥ 1.0 in ONNX Runtime and eager",
                        lambda r: (min(r.ratio("ort"), r.ratio("eager_cl")), 1.0))])


CASES = {
    "condensenet86_b64": lambda: condensenet86(64),
    "condensenet86_b1": lambda: condensenet86(1),
    "condensenet74_c4_224_b8": lambda: condensenet74_c4(8),
    "resnet18_flgc_balanced_32_b64": lambda: resnet18_flgc(True, 32, 64),
    "resnet18_flgc_uneven_32_b64": lambda: resnet18_flgc(False, 32, 64),
    "resnet18_flgc_balanced_224_b8": lambda: resnet18_flgc(True, 224, 8),
    "resnet18_flgc_uneven_224_b8": lambda: resnet18_flgc(False, 224, 8),
    "lenet5_ssl_b256": lambda: lenet5_ssl(256),
    "resnet56_dead50_b64": lambda: dead_channels("resnet56", 64),
    "vgg16_bn_dead50_b64": lambda: dead_channels("vgg16_bn", 64),
    "vgg16_bn_slim_odd_b64": lambda: odd_widths("vgg16_bn", "slim", 64),
    "resnet56_ssl_odd_b64": lambda: odd_widths("resnet56", "ssl", 64),
}


@torch.no_grad()
def as_if_trained(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def grouped_twin(model: nn.Module, prefix: str, groups: int) -> nn.Module:
    """The same network with every conv under `prefix*` a plain Conv2d(groups=G)."""
    for name, conv in list(model.named_modules()):
        if type(conv) is nn.Conv2d and name.startswith(prefix) and "downsample" not in name:
            model.set_submodule(name, nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                                conv.padding, groups=groups, bias=conv.bias is not None))
    return model
