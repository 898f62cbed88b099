"""`learnsparse.sparsify(model, method=…)`: give any model learned grouping by replacing its convs.

    model = torchvision.models.resnet18(num_classes=10)
    learnsparse.sparsify(model, method="flgc", groups=4, include=["layer*.conv*"])

`method="lgc"` puts CondenseNet's LearnedGroupConv in place of each matching conv (learned
input groups, condensed on the `sparsity=condensenet` schedule); `method="flgc"` puts FLGConv
(learned input *and* filter groups, `sparsity=flgc`). Weights are copied, so a trained dense
model starts where it was. Convs that cannot take the method (grouped or depthwise ones, or
ones too small for the group count) are skipped and named in the returned report.
"""
from __future__ import annotations

import logging
from fnmatch import fnmatchcase

import torch
import torch.nn as nn

from learnsparse.core.layer_types import learned_by
from learnsparse.core.record import declare_edit
from learnsparse.layers.flgc_conv import FLGConv
from learnsparse.layers.learned_group_conv import LearnedGroupConv

log = logging.getLogger("learnsparse")
METHODS = ("lgc", "flgc")


def _matches(name: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    return (any(fnmatchcase(name, p) for p in (include or ["*"]))
            and not any(fnmatchcase(name, p) for p in (exclude or [])))


def _why_not(conv: nn.Conv2d, method: str, groups: int, condense_factor: int) -> str | None:
    if conv.groups != 1:
        return "already grouped"
    if conv.dilation != (1, 1) or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return "dilated or non-zero padding mode"
    if method == "flgc" and groups > min(conv.in_channels, conv.out_channels):
        return f"fewer than {groups} channels"
    if method == "lgc" and (conv.out_channels % groups or conv.in_channels < condense_factor):
        return f"out_channels not a multiple of {groups} or in_channels < {condense_factor}"
    return None


def _learned(conv: nn.Conv2d, method: str, groups: int, condense_factor: int, balanced: bool,
             temperature: float) -> nn.Module:
    if method == "flgc":
        return FLGConv.from_conv(conv, groups, balanced, temperature)
    layer = LearnedGroupConv(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                             groups, condense_factor, bias=conv.bias is not None)
    layer.conv.load_state_dict(conv.state_dict())
    return layer.to(conv.weight.device)


@torch.no_grad()
def sparsify(model: nn.Module, method: str = "flgc", groups: int = 4, condense_factor: int = 4,
             include: list[str] | None = None, exclude: list[str] | None = None, balanced: bool = False,
             temperature: float = 1.0) -> dict[str, list[str]]:
    """Replace, in place, every matching ungrouped nn.Conv2d of `model`. Returns
    {"replaced": [names], "skipped": ["name: reason"]}; raises ValueError if nothing matched."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if groups < 1:
        raise ValueError(f"groups must be ≥ 1, got {groups}")
    replaced, skipped = [], []
    # The convs inside learned layers are theirs (a LearnedGroupConv wraps one).
    learned = [n for n, m in model.named_modules() if learned_by(m) is not None]
    for name, conv in list(model.named_modules()):
        if type(conv) is not nn.Conv2d or not _matches(name, include, exclude):
            continue
        if any(name.startswith(prefix + ".") for prefix in learned):
            continue
        reason = _why_not(conv, method, groups, condense_factor)
        if reason:
            skipped.append(f"{name}: {reason}")
            continue
        model.set_submodule(name, _learned(conv, method, groups, condense_factor, balanced, temperature))
        replaced.append(name)
    if not replaced:
        raise ValueError(f"sparsify: no conv matches include={include} exclude={exclude} that can take "
                         f"method={method} with groups={groups}" + (f" (skipped: {skipped[:3]})" if skipped else ""))
    if skipped:
        log.info("sparsify: %d convs left as they are: %s", len(skipped), ", ".join(skipped))
    declare_edit(model, "sparsify", redo_sparsify, method=method, groups=int(groups), condense_factor=int(condense_factor),
                 include=_plain(include), exclude=_plain(exclude), balanced=bool(balanced),
                 temperature=float(temperature))
    return {"replaced": replaced, "skipped": skipped}


def _plain(patterns) -> list[str] | None:
    return None if patterns is None else [str(p) for p in patterns]


def redo_sparsify(model: nn.Module, edit: dict) -> None:
    sparsify(model, **{k: v for k, v in edit.items() if k not in ("op", "redone_by")})
