"""How a deployed model is captured as a graph (torch.export, ONNX): the form the graph
exporters trace, and the exporter kept quiet. The export's files and the runtimes that time
graphs both go through here, so every route sees the same graph."""
from __future__ import annotations

import contextlib
import copy
import io
import logging

import torch
import torch.nn as nn


def graph_form(deployed: nn.Module) -> nn.Module:
    """What the graph exporters trace: the deployed model with plain (NCHW-contiguous) weights.
    Channels-last is an eager-PyTorch layout choice; graphs have no memory format, and traced
    channels-last tensors bring stride arithmetic (Shape, Range, Mul) into the graph. Graph
    runtimes (ONNX Runtime, TensorRT, inductor) pick their own layouts."""
    return copy.deepcopy(deployed).to(memory_format=torch.contiguous_format).eval()


@contextlib.contextmanager
def quiet_onnx_export():
    """The ONNX exporter and its graph optimizer narrate every step on stdout and through
    logging; what matters is checked afterwards (against onnxruntime). Loggers are restored."""
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
