"""Torch-Pruning's DependencyGraph, made safe for the CNNs users bring.

Three changes, each because a real model broke the plain graph:

- grouped convs prune with `GroupedConvPruner` (ResNeXt, RegNet: Torch-Pruning's own conv
  pruner indexes grouped weights out of bounds);
- a reshape Torch-Pruning cannot map (a channel shuffle's view–transpose–view, which raised
  ZeroDivisionError while the graph was built) is marked *opaque* instead: the channels that
  reach it are coupled and kept. A reshape is trusted only when its real shapes show it keeps
  the channel dimension, or flattens (N, C, H, W) into (N, C·H·W) with the matching stride;
- the search for one group is bounded (`max_search_steps` dependencies visited): on some
  topologies (partial-channel residual adds) it otherwise runs for minutes. A group over the
  bound raises `SearchBound`, and its channels are kept. The bound is a count, not a time, so
  the result is the same on every machine.

`build(model, example)` traces with every module's state put back afterwards (module_state).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import _helpers, ops
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.group import Group
from torch_pruning.pruner import function

from .grouped_conv import GroupedConvPruner
from .module_state import kept_state

MAX_SEARCH_STEPS = 20_000


class SearchBound(RuntimeError):
    """A group's dependency search visited more than `max_search_steps` dependencies."""


class ReachesOpaque(RuntimeError):
    """A group's dependency search reached an opaque reshape: the group keeps its channels
    whatever else it holds, so the search stops there (on MaxViT's window partitions the whole
    search took minutes, group after group)."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


class DependencyGraph(tp.DependencyGraph):
    def __init__(self, max_search_steps: int = MAX_SEARCH_STEPS):
        super().__init__()
        self.REGISTERED_PRUNERS[ops.OPTYPE.CONV] = GroupedConvPruner()
        self._in_channel_pruning_fn = {p.prune_in_channels for p in self.REGISTERED_PRUNERS.values() if p is not None}
        self._out_channel_pruning_fn = {p.prune_out_channels for p in self.REGISTERED_PRUNERS.values()
                                        if p is not None}
        self.max_search_steps = max_search_steps
        self.opaque: dict = {}  # node → why Torch-Pruning's index mapping cannot be trusted there

    def update_index_mapping(self) -> None:
        with _safe_reshape_mapping(self):
            index_mapping.update_index_mapping(self)

    def build_dependency(self, model, example_inputs, **kwargs):
        with _safe_reshape_mapping(self):
            super().build_dependency(model, example_inputs, **kwargs)
        for node in self.module2node.values():
            if node.type == ops.OPTYPE.RESHAPE and node not in self.opaque:
                why = _untrusted_reshape(node)
                if why:
                    self.opaque[node] = why
        return self

    def get_pruning_group(self, module: nn.Module, pruning_fn, idxs, stop_at_opaque: bool = False) -> Group:
        """Torch-Pruning's get_pruning_group (1.6), with the search bounded and the reshape
        mapping made safe; otherwise the same, so recorded histories replay identically. With
        `stop_at_opaque`, reaching an opaque reshape raises `ReachesOpaque` at once."""
        if module not in self.module2node:
            raise ValueError(f"Module {module} is not in the dependency graph.")
        if isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
            pruning_fn = function.prune_depthwise_conv_out_channels
        if isinstance(idxs, int):
            idxs = [idxs]
        idxs = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
        self.update_index_mapping()
        group = Group()
        root_node = self.module2node[module]
        group.add_dep(dep=Dependency(pruning_fn, pruning_fn, source=root_node, target=root_node), idxs=idxs)
        visited, stack, steps = set(), [(group[0].dep, idxs)], 0
        while stack:
            dep, idxs = stack.pop(-1)
            steps += 1
            if steps > self.max_search_steps:
                raise SearchBound(f"dependency search over {self.max_search_steps} steps")
            node, fn = dep.target, dep.handler
            visited.add(node)
            for new_dep in node.dependencies:
                if not new_dep.is_triggered_by(fn):
                    continue
                new_idxs = idxs
                for mapping in new_dep.index_mapping:
                    if mapping is not None:
                        new_idxs = mapping(new_idxs)
                if len(new_idxs) == 0:
                    continue
                if new_dep.target in visited and group.has_pruning_op(new_dep, new_idxs):
                    continue
                if stop_at_opaque and new_dep.target in self.opaque:
                    raise ReachesOpaque(self.opaque[new_dep.target])
                group.add_dep(new_dep, new_idxs)
                stack.append((new_dep, new_idxs))
        merged = Group()
        for dep, idxs in group.items:
            if isinstance(dep.target.module, nn.Parameter) and any(dep.target.module is p for p in self.ignored_params):
                continue
            merged.add_and_merge(dep, idxs)
        merged._DG = self
        for i in range(len(merged)):
            hybrid = merged[i].idxs
            merged[i] = _helpers.GroupItem(merged[i].dep, _helpers.to_plain_idxs(hybrid))
            merged[i].root_idxs = _helpers.to_root_idxs(hybrid)
        return merged


@contextmanager
def _safe_reshape_mapping(graph: DependencyGraph):
    """Torch-Pruning's reshape mapping, made to mark a node opaque where it raises. It is a
    module-level function its graph calls by name, hence the swap for the duration."""
    original = index_mapping.update_reshape_index_mapping

    def safe(g, node):
        if node in graph.opaque:
            return
        try:
            original(g, node)
        except Exception as e:  # noqa: BLE001 - any failure here means "cannot map"
            graph.opaque[node] = f"Torch-Pruning cannot map channels through it ({type(e).__name__})"

    index_mapping.update_reshape_index_mapping = safe
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = original


def _sizes(node) -> tuple[list[int] | None, list[int] | None]:
    fn = node.grad_fn
    before = getattr(fn, "_saved_self_sym_sizes", None) or getattr(fn, "_saved_self_sizes", None)
    try:
        after = list(fn._input_metadata[0].shape)
    except (AttributeError, IndexError, TypeError):
        after = None
    return (list(before) if before is not None else None), after


def _untrusted_reshape(node) -> str | None:
    before, after = _sizes(node)
    if before is None or after is None:
        return "a reshape whose shapes are not recorded"
    mappings = [m for dep in node.dependencies for m in dep.index_mapping if m is not None]
    flatten = [m for m in mappings if isinstance(m, index_mapping._FlattenIndexMapping)]
    if len(before) >= 2 and len(after) >= 2 and before[:2] == after[:2] and not mappings:
        return None  # the channel dimension is untouched (e.g. (N, C, H, W) → (N, C, H·W))
    if not mappings and before[-1] == after[-1] and min(len(before), len(after)) == 2 and len(before) != len(after):
        return None  # a linear layer on an (N, H, W, C) tensor folds the leading dimensions: C untouched
    if len(before) == 4 and len(after) == 2 and after[1] == before[1] * before[2] * before[3] \
            and flatten and all(m._stride == before[2] * before[3] for m in flatten):
        return None  # flatten into a linear layer, which Torch-Pruning maps with this stride
    return f"a reshape {tuple(before)} → {tuple(after)} that moves channels (a channel shuffle?)"


def build(model: nn.Module, example_inputs: torch.Tensor, max_search_steps: int = MAX_SEARCH_STEPS
          ) -> DependencyGraph:
    """The dependency graph of `model` traced on `example_inputs`; the model's modes,
    requires_grad flags and memory formats are as they were when this returns."""
    with kept_state(model), torch.enable_grad():
        return DependencyGraph(max_search_steps).build_dependency(model, example_inputs=example_inputs,
                                                                  verbose=False)
