"""Running a model in the runtimes users deploy with, and timing it there.

    eager     eager PyTorch, NCHW weights and inputs
    eager_cl  eager PyTorch, channels-last weights and inputs
    compile   torch.compile (inductor)
    ort       ONNX Runtime (CPU provider with the given threads; CUDA provider on a GPU)
    pt2       the module of a torch.export program
    aoti      AOTInductor, compiled from that program

Used by the export's tactic choice (which form of each layer is fastest for the target) and
by scripts/bench_deploy.py.
"""
from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .artifacts import graph_form, quiet_onnx_export

RUNTIMES = ("eager", "eager_cl", "compile", "ort", "pt2", "aoti")
# learnsparse-export `target=` names → runtime
TARGETS = {"eager": "eager_cl", "onnxruntime": "ort", "compile": "compile", "pt2": "pt2", "aoti": "aoti"}
COMPILED_PER_FUNCTION = 64  # compilations Dynamo may keep per forward function (runner)
# Where a layer's forms are timed one by one for a target, if not in the target's runtime
# itself: an AOTInductor build per form of every layer would take minutes; torch.compile
# generates the same Inductor code in seconds. The assembled network is still checked in
# AOTInductor (condense_with_details).
LAYER_RUNTIME = {"aoti": "compile"}


def runner(model: nn.Module, runtime: str, x: torch.Tensor, threads: int, work: Path,
           eager_form: nn.Module | None = None) -> Callable[[], object]:
    """A function that runs one forward of `model` in `runtime` on `x` (on x's device).
    `eager_form`: the module to run channels-last in eager PyTorch (default: `model`)."""
    device = x.device
    plain = graph_form(model).to(device)
    if runtime == "eager":
        return lambda: plain(x)
    if runtime == "eager_cl":
        m = copy.deepcopy(eager_form if eager_form is not None else model).to(device, memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
        return lambda: m(xc)
    if runtime == "compile":
        compiled = torch.compile(plain)
        # Compiled now, not at the first timed call: Dynamo keeps at most `recompile_limit`
        # compilations per forward function, and networks of one model class (dense, twin,
        # export, every tactic candidate) share theirs; past the limit it would silently run
        # eager and the timing would not be torch.compile's.
        with torch._dynamo.config.patch(recompile_limit=COMPILED_PER_FUNCTION,
                                        accumulated_recompile_limit=16 * COMPILED_PER_FUNCTION):
            compiled(x)
        return lambda: compiled(x)
    if runtime == "ort":
        return _onnxruntime(plain, x, threads, work)
    program = torch.export.export(plain, (x,))
    if runtime == "pt2":
        m = program.module()
        return lambda: m(x)
    if runtime == "aoti":
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(work / f"m{id(model)}.pt2"))
        m = torch._inductor.aoti_load_package(path)
        return lambda: m(x)
    raise ValueError(f"unknown runtime {runtime!r}; choose from {list(RUNTIMES)}")


def _onnxruntime(plain: nn.Module, x: torch.Tensor, threads: int, work: Path):
    import onnxruntime as ort

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
