"""What the channel pass must leave as it found it, and how it undoes one group's pruning.

Torch-Pruning's DependencyGraph puts the model in eval mode to trace it and never restores
the mode; its pruners make every new weight a fresh `nn.Parameter` (requires_grad=True,
contiguous NCHW). The in-training shrink runs this pass on the model being trained, so a
frozen parameter must stay frozen, a channels-last weight channels-last, a training model in
training mode. `kept_state` records all three and puts them back, by module and attribute
name (pruned parameters are new objects).

`Snapshot` undoes a group's pruning that raised or changed the output: pruners replace
attributes (weights, channel counts, op offsets) rather than writing into tensors, so a
shallow copy of the attributes of the modules a group can touch is enough to go back.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


@contextmanager
def kept_state(model: nn.Module):
    """Inside: every parameter requires grad (tracing follows autograd) and the model is in
    eval mode; after: each module's mode, and each parameter's requires_grad and memory
    format, as they were."""
    modes = {m: m.training for m in model.modules()}
    params = {(m, name): (p.requires_grad, _channels_last(p)) for m in model.modules()
              for name, p in m.named_parameters(recurse=False)}
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
        yield
    finally:
        for m, training in modes.items():
            m.training = training
        for (m, name), (requires_grad, nhwc) in params.items():
            p = m._parameters.get(name)
            if p is None:
                continue
            if nhwc and not _channels_last(p):
                p.data = p.data.contiguous(memory_format=torch.channels_last)
            p.requires_grad_(requires_grad)
        # Parameters a pass added (a bias absorbing a constant) follow their layer's weight.
        for m in model.modules():
            w = m._parameters.get("weight")
            for name, p in m._parameters.items():
                if p is not None and (m, name) not in params and isinstance(w, torch.Tensor):
                    p.requires_grad_(w.requires_grad)


class Snapshot:
    """Every module's attributes (and the dependency graph's maps), to restore after a failed group."""

    def __init__(self, model: nn.Module, graph=None, modules=None):
        """`modules`: only these (layers and graph ops) change before `restore`; by default
        every module of the model and every op of the graph. Copying every attribute of a
        network of thousands of modules, once per dependency group, took seconds on the largest."""
        chosen = list(model.modules()) if modules is None else list(dict.fromkeys(modules))
        self.modules = {m: _copy_attrs(m) for m in chosen}
        self.graph = graph
        if graph is not None:
            self.ops = {} if modules is not None else {
                node.module: _copy_attrs(node.module) for node in graph.module2node.values()
                if isinstance(node.module, nn.Module) and node.module not in self.modules}
            self.module2node = dict(graph.module2node)
            self.param_nodes = {node: node.module for node in graph.module2node.values()
                                if isinstance(node.module, nn.Parameter)}
            self.param_to_name = dict(graph._param_to_name)
            self.history = len(graph._pruning_history)

    def restore(self) -> None:
        for m, attrs in {**self.modules, **getattr(self, "ops", {})}.items():
            m.__dict__.clear()
            m.__dict__.update(_copied(attrs))
        g = self.graph
        if g is not None:
            g.module2node.clear()
            g.module2node.update(self.module2node)
            for node, p in self.param_nodes.items():
                node.module = p
            g._param_to_name.clear()
            g._param_to_name.update(self.param_to_name)
            del g._pruning_history[self.history:]


_CONTAINERS = ("_parameters", "_buffers", "_modules")


def _copy_attrs(m) -> dict:
    return _copied(m.__dict__)


def _copied(attrs: dict) -> dict:
    # Containers and lists (op offsets, split sizes) are edited in place by pruners: copied.
    return {k: dict(v) if k in _CONTAINERS else list(v) if isinstance(v, list) else v for k, v in attrs.items()}
