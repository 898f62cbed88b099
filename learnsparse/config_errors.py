"""Hydra's composition errors as one line a user can act on: the reason and the nearest names.

Hydra says `Could not override 'trainer.epoch'` and keeps the reason (the key does not exist)
in the exception's cause; a missing group option comes with every option on its own line and
the whole config search path. Model names already get "did you mean"; keys and options get
the same here.
"""
from __future__ import annotations

import difflib
import re

from omegaconf import DictConfig

_BAD_OVERRIDE = re.compile(r"Could not override '([^']+)'")
_MISSING_OPTION = re.compile(r"Could not find '([^']+)/([^'/]+)'")


def config_keys(cfg, prefix: str = "") -> list[str]:
    """Every dotted key of a composed config (list items are not keys)."""
    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}.{k}" if prefix else str(k)
            keys.append(full)
            node = cfg._get_node(k)
            if isinstance(node, DictConfig):
                keys += config_keys(node, full)
    return keys


def did_you_mean(name: str, candidates, n: int = 3) -> str:
    """Close names; a dotted key is compared with its siblings first (same parent), so
    `trainer.epoch` suggests `trainer.epochs` and not every key under `trainer`."""
    candidates = list(candidates)
    parent, _, leaf = name.rpartition(".")
    siblings = [c.rpartition(".")[2] for c in candidates if c.rpartition(".")[0] == parent]
    close = [f"{parent}.{c}" if parent else c for c in difflib.get_close_matches(leaf, siblings, n=n, cutoff=0.6)]
    if not close:
        close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.8)
    return f"did you mean {' or '.join(close)}?" if close else ""


def _options_listed(text: str) -> list[str]:
    lines = text.splitlines()
    if not any(ln.startswith("Available options") for ln in lines):
        return []
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Available options")) + 1
    options = []
    for ln in lines[start:]:
        if not ln.startswith("\t") and not ln.startswith(" "):
            break
        options.append(ln.strip())
    return options


def describe(exc: BaseException, valid_keys=None) -> str:
    """One line for a composition error. `valid_keys(key)` lists the config's keys, asked only
    when `key` is unknown (it composes the config again without that override)."""
    text = str(exc).strip()
    bad = _BAD_OVERRIDE.search(text)
    if bad:
        key = bad.group(1)
        cause = str(exc.__cause__ or "")
        if "not in struct" in cause or "Missing key" in cause:
            hint = did_you_mean(key, valid_keys(key) if valid_keys else [])
            return (f"no config key '{key}'" + (f"; {hint}" if hint else "")
                    + f" (to add a new key, write +{key}=...)")
        reason = cause.splitlines()[0].strip() if cause.strip() else ""
        return f"Could not override '{key}'" + (f": {reason}" if reason else "")
    missing = _MISSING_OPTION.search(text)
    if missing:
        group, name = missing.groups()
        options = _options_listed(text)
        hint = did_you_mean(name, options)
        return (f"Could not find '{group}/{name}': no option '{name}' in group {group}"
                + (f"; {hint}" if hint else "") + (f" (available: {', '.join(options)})" if options else ""))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    kept = []
    for ln in lines:
        if ln.startswith(("Config search path", "provider=", "Available options", "full_key:", "object_type=")):
            break
        kept.append(ln)
    return " ".join(kept or lines[:1])

