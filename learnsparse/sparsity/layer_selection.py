"""Which layers a plugin acts on: module-name patterns over a default set of layer types."""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable

import torch.nn as nn

# Names torchvision and our models give to projection shortcuts.
SHORTCUT_PATTERNS = ("*shortcut*", "*downsample*")


def first_conv_name(model: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def select_layers(model: nn.Module, types: tuple[type, ...], include: Iterable[str] | None = None,
                  exclude: Iterable[str] | None = None, exclude_first_conv: bool = False,
                  exclude_shortcuts: bool = False) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module of `types` whose name matches an `include` pattern
    (default: all) and no `exclude` pattern (fnmatch syntax, e.g. "layer3.*", "*.conv2")."""
    include = list(include or ["*"])
    exclude = list(exclude or [])
    if exclude_shortcuts:
        exclude += SHORTCUT_PATTERNS
    first = first_conv_name(model) if exclude_first_conv else None
    chosen = []
    for name, m in model.named_modules():
        if not isinstance(m, types) or name == first:
            continue
        if any(fnmatchcase(name, p) for p in include) and not any(fnmatchcase(name, p) for p in exclude):
            chosen.append((name, m))
    return chosen
