"""Config nodes into objects: each node is built by Hydra from its `_target_`, and the
sparsity plugins (partials that take the model, and the run's budget where they meet one)
are applied to the model. Training builds its run with these, and an export rebuilds a
checkpoint written before records with them."""
from __future__ import annotations

import inspect

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .errors import UserError, find_cause, first_line


def build_node(node, what: str, **kwargs):
    try:
        return instantiate(node, **kwargs)
    except UserError:
        raise
    except Exception as e:
        # Hydra wraps the real cause; the innermost message is the one that names the problem.
        cause = find_cause(e)
        if isinstance(cause, UserError):
            raise cause from e
        raise UserError(f"cannot build {what}: {first_line(cause, limit=None)}") from e


def build_plugins(cfg: DictConfig, model: torch.nn.Module, input_shape: list[int] | None = None) -> list:
    """Each entry of `sparsity` is a partial that takes the model; it may change the model's
    layers, so plugins are built before the optimizer sees the parameters."""
    plugins = []
    # The top-level budget goes to every plugin that takes one (threshold, lgc, flgc).
    budget = OmegaConf.to_container(cfg.budget, resolve=True) if cfg.get("budget") is not None else None
    budget = budget if budget and any(budget.get(k) is not None for k in ("macs", "params", "latency")) else None
    if budget:
        budget["input_shape"] = input_shape  # lgc and flgc choose their setting before training
    met = False
    for name, node in (cfg.get("sparsity") or {}).items():
        plugin = build_node(node, f"sparsity.{name}")
        if callable(plugin) and not hasattr(plugin, "before_train"):
            extra = {"budget": budget} if budget and "budget" in inspect.signature(plugin).parameters else {}
            met |= bool(extra)
            try:
                plugin = plugin(model=model, **extra)
            except (ValueError, TypeError) as e:  # a plugin refusing its settings or this model
                raise UserError(f"sparsity.{name}: {first_line(e, limit=None)}") from e
        plugin.name = name
        plugins.append(plugin)
    if budget and not met:
        raise UserError("budget: no sparsity plugin of this run meets a budget; add threshold (after SSL, group lasso "
                        "or slimming), lgc or flgc to sparsity")
    return plugins


# Modules that plugins moved out of: a config saved before the move names its `_target_`s there.
MOVED_MODULES = {"learnsparse.sparsity.flgc.": "learnsparse.sparsity.flgc_schedule.",
                 "learnsparse.sparsity.connectivity.": "learnsparse.sparsity.connectivity_images."}


def with_current_targets(node):
    """A saved config (plain dicts and lists) with every `_target_` in a moved module renamed."""
    if isinstance(node, dict):
        out = {k: with_current_targets(v) for k, v in node.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for old, new in MOVED_MODULES.items():
                if target.startswith(old):
                    out["_target_"] = new + target[len(old):]
        return out
    if isinstance(node, list):
        return [with_current_targets(v) for v in node]
    return node

