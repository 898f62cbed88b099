"""conv → the BatchNorm that directly normalizes its output, found with torch.fx.

The freeze step kills a dead filter together with its BatchNorm's γ and β: a zero filter
followed by a live BatchNorm outputs the constant β − γμ/σ, not zero, and that constant is
not removable in general (see the structure export)."""
from __future__ import annotations

import logging

import torch.fx as fx
import torch.nn as nn

log = logging.getLogger("learnsparse")


def batchnorm_after(model: nn.Module) -> dict[str, str]:
    """{conv name: batchnorm name} for every conv whose only user is a BatchNorm module."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # models with data-dependent control flow do not trace
        log.warning("cannot trace %s with torch.fx (%s): dead filters keep their BatchNorm",
                    type(model).__name__, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return {}
    modules = dict(model.named_modules())
    pairs = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.Conv2d) and len(node.users) == 1:
            user = next(iter(node.users))
            if user.op == "call_module" and isinstance(modules.get(user.target), nn.BatchNorm2d):
                pairs[node.target] = user.target
    return pairs
