"""Which form of each learned layer to deploy, for the runtime the user deploys with.

A learned layer has equivalent forms: its sparse deployed form (gathers + grouped, per-group
or fused convs, from its converter) and its dense form (a plain conv with the zeros baked in,
no gathers). Which is faster depends on the runtime, the batch, the thread count and the
layer's shapes — a grouped 1x1 conv can lose to a dense one in oneDNN, a Gather can cost more
than the MACs it saves. Like TensorRT's tactic selection, each layer's forms are timed on the
layer's real input in the target runtime and the faster one is kept, so an export is never
slower, layer by layer, than the dense network the user had. Without measuring, a fixed rule
decides: the sparse form when it does at most half the dense form's multiply-adds.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from learnsparse.core.counting import macs_by_module
from learnsparse.core.layer_types import layer_type, outermost_layers
from learnsparse.core.runtimes import interleaved_ms, layer_runtime, runner, target_runtime

SPARSE, DENSE = "sparse", "dense"
RULE_MAC_RATIO = 0.5  # measure=false: sparse when it computes at most this share of the dense MACs


def tactic_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost layers that have both a converter and a dense form, top-down."""
    both = lambda e: e.converter is not None and e.dense_form is not None  # noqa: E731
    return [(name, module) for name, module, _ in outermost_layers(model, both)]


@torch.no_grad()
def layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_pre_hook(lambda m, args, n=n: seen.setdefault(n, args[0].detach()))
               for n in names]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def choose_tactics(model: nn.Module, example: torch.Tensor, target: str = "eager", batch: int | None = None,
                   threads: int | None = None, measure: bool = True, rounds: int = 11) -> dict[str, dict]:
    """{layer name: {"form": "sparse" | "dense", "ms": {form: ms} (measured), "macs": {form: MACs}}}."""
    target_runtime(target)  # an unknown target fails here, before any work
    layers = tactic_layers(model)
    if not layers:
        return {}
    x = example[:1].expand(batch or example.shape[0], *example.shape[1:]).contiguous()
    inputs = layer_inputs(model, [n for n, _ in layers], x)
    choices = {}
    with tempfile.TemporaryDirectory() as work:
        for name, layer in layers:
            entry = layer_type(layer)
            sparse = entry.converter(copy.deepcopy(layer))
            if sparse is None:
                continue
            forms = {SPARSE: sparse.eval(), DENSE: entry.dense_form(layer).eval()}
            one = inputs[name][:1]
            macs = {k: int(macs_by_module(m, one)[""]) for k, m in forms.items()}
            choice = {"macs": macs}
            if measure:
                runners = {k: runner(m, layer_runtime(target), inputs[name], threads or torch.get_num_threads(), Path(work))
                           for k, m in forms.items()}
                choice["ms"] = interleaved_ms(runners, rounds=rounds)
                choice["form"] = min(choice["ms"], key=choice["ms"].get)
            else:
                choice["form"] = SPARSE if macs[SPARSE] <= RULE_MAC_RATIO * macs[DENSE] else DENSE
            choices[name] = choice
    return choices


@torch.no_grad()
def whole_model_ms(models: dict[str, nn.Module], example: torch.Tensor, target: str, batch: int | None,
                   threads: int | None, rounds: int = 11) -> dict[str, float]:
    """Assembled networks timed side by side in the target runtime."""
    x = example[:1].expand(batch or example.shape[0], *example.shape[1:]).contiguous()
    with tempfile.TemporaryDirectory() as work:
        threads = threads or torch.get_num_threads()
        return interleaved_ms({k: runner(m, target_runtime(target).name, x, threads, Path(work)) for k, m in models.items()},
                              rounds=rounds)
