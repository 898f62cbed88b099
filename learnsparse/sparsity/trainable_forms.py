"""Which form each layer trains in after the in-training swap: its deployed form, or the masked
layer it was.

Both compute the same function. The deployed form does fewer multiply-adds, but its backward
(a gather's gradient is a scatter-add; a grouped conv's weight gradient runs per group) is not
faster in every runtime: on a CPU in eager PyTorch, CondenseNet-86's 1x1 learned group convs
train slower deployed than masked. So, as the export picks each layer's form by timing it in
the target runtime, `choose="measure"` times one training step's work of each layer in both
forms — forward and backward on the layer's real input: the training batch size, memory
format and autocast dtype — and swaps only the layers whose deployed form is clearly faster
(by `SWAP_MARGIN`).
`choose="deployed"` swaps every layer without timing (the same choice on every machine).

Timing runs on copies, outside the training's random stream, and rank 0's choice is the one
every rank applies. The choice goes into the record's edit, so resume replays it rather than
timing again.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
import torch.nn as nn

from learnsparse.engine.distributed import broadcast_object, is_main_process
from learnsparse.export.runtimes import interleaved_ms
from learnsparse.export.tactics import layer_inputs

DEPLOYED, MASKED, MEASURE = "deployed", "masked", "measure"
CHOICES = (MEASURE, DEPLOYED)
# A layer swaps only when its deployed form is at least this much faster: nearer than that the
# two forms cost the same, and the machine's timing noise alone would decide, so two fresh runs
# (or a rerun on the same machine) would choose differently for nothing gained.
SWAP_MARGIN = 1.05


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
    training batch's worth of input (only when timing)."""
    if check_choice(choose) == DEPLOYED:
        return {name: {"form": DEPLOYED} for name in deployed}
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
