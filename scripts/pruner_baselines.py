"""What scripts/compare_pruners.py compares learnsparse against, in plain PyTorch and
Torch-Pruning: the two networks (a VGG-style net and a CIFAR-style ResNet-20 for 1-channel
28x28 images), their narrowed versions at a MACs target, the Torch-Pruning pruners cut to a
MACs target, and the fine-tuning loop every Torch-Pruning row shares.

Imported by compare_pruners.py, run as `python scripts/compare_pruners.py` (the scripts
folder is then on the path, so `pruner_baselines.SmallVGG` is also a `_target_` learnsparse
can build and rebuild from a checkpoint's record).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from learnsparse.core.counting import count_params, macs_by_module

VGG_WIDTHS = (16, 16, 32, 32, 64, 64)
RESNET_WIDTHS = (16, 32, 64)


class SmallVGG(nn.Module):
    """Six 3x3 convs with BatchNorm in three stages (a max-pool after every second), global
    pooling and one linear layer: the user's network of docs/compress.md, with its widths open."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths=VGG_WIDTHS):
        super().__init__()
        if len(widths) != 6 or min(widths) < 1:
            raise ValueError(f"SmallVGG takes six positive widths, got {widths}")
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, int(w), 3, padding=1, bias=False), nn.BatchNorm2d(int(w)), nn.ReLU(inplace=True)]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            c = int(w)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def model_node(model: str, widths=None) -> dict:
    """The learnsparse model config of `model` ("vgg" or "resnet20"), at its own or the given widths."""
    if model == "vgg":
        return {"_target_": "pruner_baselines.SmallVGG", "num_classes": 10, "in_channels": 1,
                "widths": list(widths or VGG_WIDTHS)}
    if model == "resnet20":
        return {"_target_": "learnsparse.models.resnet_cifar.CifarResNet", "depth": 20, "num_classes": 10,
                "in_channels": 1, "widths": list(widths or RESNET_WIDTHS)}
    raise ValueError(f"model must be vgg or resnet20, got {model!r}")


def build(node: dict) -> nn.Module:
    from hydra.utils import instantiate

    return instantiate(node)


def macs(model: nn.Module, example: torch.Tensor) -> int:
    return macs_by_module(model.eval(), example[:1])[""]


def narrowed_widths(model: str, target_macs: float, round_to: int | None, example: torch.Tensor) -> list[int]:
    """The dense network with every width scaled by one factor (rounded to `round_to`): the
    widest such network whose MACs are at most `target_macs`."""
    base = VGG_WIDTHS if model == "vgg" else RESNET_WIDTHS
    step = round_to or 1
    best, best_macs = None, -1
    for i in range(1, 201):
        s = i / 200
        widths = [max(step, int(round(w * s / step)) * step) for w in base]
        m = macs(build(model_node(model, widths)), example)
        if best_macs < m <= target_macs:
            best, best_macs = widths, m
    if best is None:
        raise ValueError(f"no uniformly narrowed {model} reaches {target_macs:,.0f} MACs at round_to={round_to}")
    return best


# --- Torch-Pruning, cut to a MACs target ------------------------------------------------------

@dataclass(frozen=True)
class TPMethod:
    """One Torch-Pruning row: how to build its pruner at a pruning ratio, and whether it
    regularizes before the cut (`regularize(pruner, model)` after each backward) or needs
    gradients for its importance."""
    make: Callable[..., tp.pruner.BasePruner]
    regularizes: bool = False
    needs_grad: bool = False


def _last_linear(model: nn.Module) -> list[nn.Module]:
    return [[m for m in model.modules() if isinstance(m, nn.Linear)][-1]]


def _common(model, example, ratio, round_to):
    return dict(example_inputs=example[:1], global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=0.9,
                iterative_steps=1, round_to=round_to, ignored_layers=_last_linear(model))


TP_METHODS = {
    # MagnitudePruner is BasePruner in 1.6 (kept as an alias); L1 norms of each coupled group.
    "l1": TPMethod(lambda m, x, r, rt, reg: tp.pruner.MagnitudePruner(
        m, importance=tp.importance.MagnitudeImportance(p=1), **_common(m, x, r, rt))),
    "taylor": TPMethod(lambda m, x, r, rt, reg: tp.pruner.MagnitudePruner(
        m, importance=tp.importance.TaylorImportance(), **_common(m, x, r, rt)), needs_grad=True),
    "bnscale": TPMethod(lambda m, x, r, rt, reg: tp.pruner.BNScalePruner(
        m, importance=tp.importance.BNScaleImportance(), reg=reg, **_common(m, x, r, rt)), regularizes=True),
    "groupnorm": TPMethod(lambda m, x, r, rt, reg: tp.pruner.GroupNormPruner(
        m, importance=tp.importance.MagnitudeImportance(p=2), reg=reg, **_common(m, x, r, rt)), regularizes=True),
}


def taylor_gradients(model: nn.Module, batches: list) -> None:
    """Gradients of the training loss on a few batches, in eval mode (BatchNorm's running
    statistics untouched), which TaylorImportance reads."""
    model.eval()
    model.zero_grad()
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()


def prune_to(model: nn.Module, method: TPMethod, target_macs: float, example: torch.Tensor, round_to: int | None,
             reg: float, grad_batches: list) -> tuple[nn.Module, float]:
    """`model` pruned by `method` to at most `target_macs`: Torch-Pruning takes a channel ratio,
    not MACs, so the ratio is found by bisection on copies (what a user does by trial runs),
    and the copy at the smallest ratio that meets the target is returned with that ratio."""
    lo, hi, best = 0.0, 0.9, None
    grads = {}
    if method.needs_grad:  # once: a deepcopy does not carry .grad, so each trial gets these
        taylor_gradients(model, grad_batches)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
    for _ in range(12):
        ratio = (lo + hi) / 2
        trial = copy.deepcopy(model)
        for n, p in trial.named_parameters():
            if n in grads:
                p.grad = grads[n].clone()
        method.make(trial, example, ratio, round_to, reg).step()
        trial.zero_grad(set_to_none=True)
        if macs(trial, example) <= target_macs:
            best, hi = (trial, ratio), ratio
        else:
            lo = ratio
    if best is None:
        raise ValueError(f"Torch-Pruning reached no ratio ≤ 0.9 meeting {target_macs:,.0f} MACs")
    return best


# --- the fine-tuning every Torch-Pruning row shares -------------------------------------------

@dataclass
class FineTune:
    """The recipe learnsparse's rows run under (read from the same composed config): SGD with its
    momentum, Nesterov and weight decay, a per-iteration cosine from `lr`, `epochs` epochs of
    `batch_size`, the cut(s) at progress at·k/steps, and optional KD from the dense network."""
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    batch_size: int
    at: float
    steps: int
    kd_temperature: float | None = None  # None: no distillation
    kd_alpha: float = 0.9


def _optimizer(model: nn.Module, ft: FineTune) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay,
                           nesterov=ft.nesterov)


def evaluate(model: nn.Module, dataset, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(dataset, batch_size, shuffle=False):
            correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / len(dataset)


def tp_finetune(dense: nn.Module, method: TPMethod, ft: FineTune, bundle, seed: int, target_fraction: float,
                round_to: int | None, reg: float, log=print) -> tuple[nn.Module, float]:
    """Torch-Pruning's row: from a copy of the dense network, train with the method's
    regularizer until the (last) cut, prune in `ft.steps` increments down to `target_fraction` of
    the dense MACs (equal steps, as learnsparse's budget.steps), fine-tune to the end. Returns
    the pruned network and its final test top-1."""
    torch.manual_seed(seed)
    model = copy.deepcopy(dense)
    teacher = copy.deepcopy(dense).eval() if ft.kd_temperature else None
    example = bundle.val[0][0].unsqueeze(0)
    dense_macs = macs(dense, example)
    loader = torch.utils.data.DataLoader(bundle.train, ft.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    total = ft.epochs * len(loader)
    cuts = [math.ceil(ft.at * k / ft.steps * total) for k in range(1, ft.steps + 1)]
    optimizer = _optimizer(model, ft)
    reg_pruner = method.make(model, example, 0.0, round_to, reg) if method.regularizes else None
    done, it = 0, 0
    for epoch in range(ft.epochs):
        for x, y in loader:
            if done < ft.steps and it >= cuts[done]:
                done += 1
                grad_batches = [next(iter(loader)) for _ in range(4)] if method.needs_grad else []
                model, ratio = prune_to(model, method, target_fraction_at(target_fraction, done, ft.steps) * dense_macs,
                                        example, round_to, reg, grad_batches)
                log(f"  cut {done}/{ft.steps} at step {it}: ratio {ratio:.3f}, "
                    f"{macs(model, example) / dense_macs:.4f} of the dense MACs")
                # New parameters: a fresh optimizer (learnsparse's surgery carries momentum over).
                optimizer = _optimizer(model, ft)
                reg_pruner = method.make(model, example, 0.0, round_to, reg) \
                    if method.regularizes and done < ft.steps else None
            for group in optimizer.param_groups:
                group["lr"] = ft.lr * 0.5 * (1 + math.cos(math.pi * it / total))
            model.train()
            out = model(x)
            loss = F.cross_entropy(out, y)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.log_softmax(teacher(x) / ft.kd_temperature, 1)
                kd = F.kl_div(F.log_softmax(out / ft.kd_temperature, 1), soft, reduction="batchmean", log_target=True)
                loss = (1 - ft.kd_alpha) * loss + ft.kd_alpha * ft.kd_temperature ** 2 * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if reg_pruner is not None:
                reg_pruner.regularize(model)
            optimizer.step()
            it += 1
        log(f"  epoch {epoch + 1}/{ft.epochs}: loss {float(loss):.4f}")
    return model, evaluate(model, bundle.val)


def target_fraction_at(fraction: float, step: int, steps: int) -> float:
    """Equal steps from the whole network down to `fraction` (learnsparse's Budget.fraction_at)."""
    return 1.0 - (1.0 - fraction) * step / steps


def size(model: nn.Module, example: torch.Tensor) -> dict:
    return {"macs": macs(model, example), "params": count_params(model)}
