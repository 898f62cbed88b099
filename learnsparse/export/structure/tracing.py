"""torch.fx tracing of an exported model for the passes that rewrite neighbouring layers."""
from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from learnsparse.core.layer_types import has_fact


class _Tracer(fx.Tracer):
    # Deployed layers are single operations to the passes; their insides are not rewritten.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return has_fact(m, "trace_leaf") or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> tuple[fx.Graph, dict[str, int]] | None:
    """The graph and how often each submodule is called, or None for models with
    data-dependent control flow (the passes then leave them alone)."""
    try:
        graph = _Tracer().trace(model)
    except Exception:
        return None
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return graph, calls
