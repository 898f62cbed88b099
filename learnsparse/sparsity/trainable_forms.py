"""Which form each layer trains in after the in-training swap: its deployed form, or the masked
layer it was.

Both compute the same function. The deployed form does fewer multiply-adds, but its backward
(a gather's gradient is a scatter-add; a grouped conv's weight gradient runs per group) is not
faster everywhere: on a CPU in eager PyTorch, CondenseNet-86's learned 1x1 convs at 32x32 and
16x16 train slower deployed than masked, and those at 8x8 faster. Three choices:

- `rule` (CondenseNet's and `lgc`'s default): a fixed rule on the layer's input shape — the
  deployed form where the input has at most `RULE_MAX_PIXELS` pixels (H x W), masked above.
  It reads only shapes, so every machine, every load and every rerun makes the same choice.
- `deployed` (FLGC's default): every layer that has a trainable deployed form swaps.
- `measure` (opt-in): one training step's work of each layer — forward and backward on its
  real input: the training batch size, memory format and autocast dtype — is timed in both
  forms, and a layer swaps only when its deployed form is clearly faster (by `SWAP_MARGIN`).
  The choice depends on the machine and its load: it is recorded and replayed, but a fresh
  run may choose differently.

The choice is made once, before the first training step (so before any checkpoint a run could
resume from), on a copy of the model whose structure is made final there; it goes into the
schedule's checkpoint state and into the swap's record edit, so a run killed before or after
the swap, resumed, swaps the same layers. Timing runs on copies, outside the training's
random stream, and rank 0's choice is the one every rank applies.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
import torch.nn as nn

from learnsparse.core.distributed import broadcast_object, is_main_process
from learnsparse.core.runtimes import interleaved_ms
from learnsparse.export.tactics import layer_inputs

DEPLOYED, MASKED, MEASURE, RULE = "deployed", "masked", "measure", "rule"
CHOICES = (RULE, DEPLOYED, MEASURE)
# A layer swaps only when its deployed form is at least this much faster: nearer than that the
# two forms cost the same, and the machine's timing noise alone would decide, so two fresh runs
# (or a rerun on the same machine) would choose differently for nothing gained.
SWAP_MARGIN = 1.05
# `rule`: the largest input (H x W pixels) at which a learned layer trains deployed. Measured on
# CondenseNet-86 (docs/condense_in_training.md): at 8x8 its deployed 1x1 layers train 1.5-1.7x
# faster than masked, at 16x16 0.93-0.96x, at 32x32 0.3-0.6x; the gather and the per-group
# weight gradient cost more than the dense 1x1 they replace once the maps are large.
RULE_MAX_PIXELS = 8 * 8


def rule_form(input_shape: torch.Size | tuple) -> str:
    """The form `rule` gives a layer whose input (N, C, H, W) has this shape."""
    pixels = 1
    for d in tuple(input_shape)[2:]:
        pixels *= int(d)
    return DEPLOYED if pixels <= RULE_MAX_PIXELS else MASKED


def faster_form(ms: dict[str, float]) -> str:
    """The form a layer trains in, given its measured {form: ms}."""
    return DEPLOYED if ms[DEPLOYED] * SWAP_MARGIN < ms[MASKED] else MASKED


def check_choice(choose: str) -> str:
    if choose not in CHOICES:
        raise ValueError(f"trainable_form must be one of {list(CHOICES)}, got {choose!r}")
    return choose


def own_random_stream(device: torch.device):
    """Random draws inside leave the training's stream (CPU, and `device` if CUDA) untouched."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def training_step_ms(forms: dict[str, nn.Module], x: torch.Tensor, amp_dtype: torch.dtype | None = None,
                     rounds: int = 9) -> dict[str, float]:
    """Median ms of forward + backward (input and weight gradients) of each module on `x`."""
    runners = {}
    for key, module in forms.items():
        module = copy.deepcopy(module).train()
        inp = x.detach().clone().requires_grad_(True)
        with _autocast(x.device, amp_dtype):
            grad = torch.randn_like(module(inp))

        def step(module=module, inp=inp, grad=grad):
            for p in module.parameters():
                p.grad = None  # as zero_grad(set_to_none=True) leaves them every step
            inp.grad = None
            with torch.enable_grad(), _autocast(x.device, amp_dtype):  # the timer runs under no_grad
                out = module(inp)
            out.backward(grad)

        runners[key] = step
    return interleaved_ms(runners, rounds=rounds)


def choose_forms(model: nn.Module, deployed: dict[str, nn.Module], example: Callable[[], torch.Tensor],
                 choose: str, amp_dtype: torch.dtype | None = None, rounds: int = 9) -> dict[str, dict]:
    """{layer name: {"form": "deployed" | "masked", "ms": {form: ms} when measured}} for the
    layers of `model` named in `deployed` (their deployed forms); `example()` makes one
    training batch's worth of input (`rule` reads only its shape)."""
    if check_choice(choose) == DEPLOYED:
        return {name: {"form": DEPLOYED} for name in deployed}
    if choose == RULE:
        probe = copy.deepcopy(model).eval()
        with own_random_stream(next(probe.parameters()).device):
            inputs = layer_inputs(probe, list(deployed), example()[:1])
        return {name: {"form": rule_form(inputs[name].shape), "input": list(inputs[name].shape[1:])}
                for name in deployed}
    if not is_main_process():
        return broadcast_object(None)  # rank 0 times alone, so that ranks do not slow each other
    example = example()
    probe = copy.deepcopy(model).eval()  # capturing inputs must not touch running statistics
    with own_random_stream(example.device):
        inputs = layer_inputs(probe, list(deployed), example)
        choices = {}
        for name, form in deployed.items():
            ms = training_step_ms({MASKED: probe.get_submodule(name), DEPLOYED: form}, inputs[name],
                                  amp_dtype, rounds)
            choices[name] = {"form": faster_form(ms), "ms": ms}
    return broadcast_object(choices)
