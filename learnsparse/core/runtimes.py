"""The runtimes users deploy with, one registration each: how to run a model there, and how
the export picks forms for it.

    register_runtime(name, runner, layer_runtime=None, *, target=None, channels_last=False, about="")

`runner(model, x, threads, work)` returns a function that runs one forward of `model` on `x`
(on x's device) in that runtime; `work` is a folder for files it needs (an ONNX file, an
AOTInductor package). `target` is the name `condense(..., target=)` and `learnsparse-export
target=` use for it (None: a runtime that is timed, never deployed for). `layer_runtime`
names the runtime where a layer's forms are timed one by one, when building the target for
every form of every layer would take too long. `channels_last`: an export for this runtime
stores its 4-D weights NHWC (eager PyTorch's fastest layout); graph runtimes get plain weights,
since a graph has no memory format.

The tactics (learnsparse/export/tactics.py), the report, `learnsparse-export`, scripts/bench_deploy.py
and the table in docs/export.md all read this registry; tests/test_runtimes.py checks that
the table lists it.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .graph_capture import graph_form, quiet_onnx_export

Runner = Callable[[nn.Module, torch.Tensor, int, Path], Callable[[], object]]


@dataclass(frozen=True)
class Runtime:
    name: str
    runner: Runner
    layer_runtime: str | None = None
    target: str | None = None
    channels_last: bool = False
    about: str = ""


_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(name: str, runner: Runner, layer_runtime: str | None = None, *, target: str | None = None,
                     channels_last: bool = False, about: str = "") -> Runtime:
    """Declare a runtime (see the module docstring). Registering a name or a target twice is an error."""
    if name in _RUNTIMES:
        raise ValueError(f"runtime {name!r} is already registered")
    if target is not None and target in targets():
        raise ValueError(f"target {target!r} already names runtime {target_runtime(target).name!r}")
    entry = Runtime(name, runner, layer_runtime, target, channels_last, about)
    _RUNTIMES[name] = entry
    return entry


def runtimes() -> list[str]:
    """Every registered runtime's name, in registration order."""
    return list(_RUNTIMES)


def runtime(name: str) -> Runtime:
    if name not in _RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; choose from {runtimes()}")
    return _RUNTIMES[name]


def targets() -> list[str]:
    """The names `target=` accepts, in registration order."""
    return [r.target for r in _RUNTIMES.values() if r.target is not None]


def target_runtime(target: str | None) -> Runtime:
    """The runtime a target deploys for (`None`: eager PyTorch, as the export's default)."""
    for entry in _RUNTIMES.values():
        if entry.target == (target or "eager"):
            return entry
    raise ValueError(f"target must be one of {targets()}, got {target!r}")


def layer_runtime(target: str) -> str:
    """Where the tactics time one layer's forms for `target`."""
    entry = target_runtime(target)
    return entry.layer_runtime or entry.name


def export_target(runtime_name: str) -> str:
    """The target an export timed in this runtime is made for: the runtime's own, or else the
    default target's (eager NCHW is timed with the export made for eager PyTorch)."""
    return runtime(runtime_name).target or target_runtime(None).target


def runner(model: nn.Module, runtime_name: str, x: torch.Tensor, threads: int, work: Path) -> Callable[[], object]:
    """A function that runs one forward of `model` in the named runtime on `x` (on x's device)."""
    return runtime(runtime_name).runner(model, x, threads, work)


# --- the built-in runtimes -------------------------------------------------------------------

def _eager(model, x, threads, work):
    plain = graph_form(model).to(x.device)
    return lambda: plain(x)


def _eager_channels_last(model, x, threads, work):
    m = copy.deepcopy(model).to(x.device, memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    return lambda: m(xc)


COMPILED_PER_FUNCTION = 64  # compilations Dynamo may keep per forward function (runner)


def _compile(model, x, threads, work):
    compiled = torch.compile(graph_form(model).to(x.device))
    # Compiled now, not at the first timed call: Dynamo keeps at most `recompile_limit`
    # compilations per forward function, and networks of one model class (dense, twin,
    # export, every tactic candidate) share theirs; past the limit it would silently run
    # eager and the timing would not be torch.compile's.
    with torch._dynamo.config.patch(recompile_limit=COMPILED_PER_FUNCTION,
                                    accumulated_recompile_limit=16 * COMPILED_PER_FUNCTION):
        compiled(x)
    return lambda: compiled(x)


def _onnxruntime(model, x, threads, work, as_is: bool = False):
    import onnxruntime as ort

    plain = model.to(x.device).eval() if as_is else graph_form(model).to(x.device)
    path = work / f"m{id(plain)}.onnx"
    with quiet_onnx_export():
        torch.onnx.export(plain, (x,), str(path), dynamo=True, external_data=False, verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ONNX Runtime's threads spin after each run by default; timed in turn with PyTorch in
    # one process, they would steal the cores PyTorch's next run needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    cuda = x.device.type == "cuda"
    session = ort.InferenceSession(str(path), options,
                                   providers=["CUDAExecutionProvider" if cuda else "CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if cuda:
        binding = session.io_binding()
        binding.bind_input(name, "cuda", x.device.index or 0, "float32", list(x.shape), x.data_ptr())
        binding.bind_output(session.get_outputs()[0].name, "cuda")
        return lambda: session.run_with_iobinding(binding)
    array = x.cpu().numpy()
    return lambda: session.run(None, {name: array})


def _program(model, x):
    with torch.no_grad():
        return torch.export.export(graph_form(model).to(x.device), (x,))


def _pt2(model, x, threads, work):
    m = _program(model, x).module()
    return lambda: m(x)


def _aoti(model, x, threads, work):
    path = torch._inductor.aoti_compile_and_package(_program(model, x), package_path=str(work / f"m{id(model)}.pt2"))
    m = torch._inductor.aoti_load_package(path)
    return lambda: m(x)


register_runtime("eager", _eager, about="eager PyTorch, NCHW weights and inputs")
register_runtime("eager_cl", _eager_channels_last, target="eager", channels_last=True,
                 about="eager PyTorch, channels-last weights and inputs (the export as `condense` writes it)")
register_runtime("compile", _compile, target="compile", about="torch.compile (inductor)")
register_runtime("ort", _onnxruntime, target="onnxruntime",
                 about="ONNX Runtime (CPU provider with the given threads; CUDA provider on a GPU)")
# `torch.onnx.export(model)` called by hand on the model as it is, whatever its weights' layout:
# what a Python-API user deploys (scripts/bench_deploy.py --direct).
register_runtime("ort_as_is", lambda model, x, threads, work: _onnxruntime(model, x, threads, work, as_is=True),
                 about="ONNX Runtime on `torch.onnx.export(model)` of the model as it is (no graph-form copy)")
register_runtime("pt2", _pt2, target="pt2", about="the module of a torch.export program (`model.pt2`)")
# An AOTInductor build per form of every layer would take minutes; torch.compile generates the
# same Inductor code in seconds. The assembled network is still checked in AOTInductor.
register_runtime("aoti", _aoti, layer_runtime="compile", target="aoti",
                 about="AOTInductor, compiled from the torch.export program")


@torch.no_grad()
def interleaved_ms(runners: dict, rounds: int = 21, warmup: int = 3) -> dict:
    """Median milliseconds per call of each runner, all timed in turn every round."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()  # time kernels, not launches
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in runners}
    for _ in range(rounds):
        for key, fn in runners.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


@torch.no_grad()
def interleaved_latency(models: dict[str, nn.Module], example: torch.Tensor, rounds: int = 20,
                        warmup: int = 2) -> dict[str, float]:
    """Median seconds per eager forward, models timed in turn each round so noise hits all alike."""
    ms = interleaved_ms({k: (lambda m=m: m(example)) for k, m in models.items()}, rounds=rounds, warmup=warmup)
    return {k: v / 1e3 for k, v in ms.items()}
