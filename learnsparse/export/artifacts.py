"""Files an export writes: condensed.pt, model.pt2, model.onnx.

`condensed.pt` holds only plain tensors and values (it loads with `weights_only=True`): the
deployed weights, the model's registry name and arguments, and the learned structure (the
masks) that fixes the deployed layers' shapes. `load()` rebuilds the deployed model from it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from learnsparse.engine.checkpoint_io import read_weights_only, save_atomic
from learnsparse.errors import UserError
from learnsparse.nn.flgc import FLGConv
from learnsparse.nn.learned_group_conv import LearnedGroupConv
from learnsparse.learned_grouping import sparsify

from .classifier import prune_classifier_inputs
from .condense import _last_linear
from .registry import convert_modules
from .structure.passes import replay

FORMAT = "learnsparse.condensed"
VERSION = 1


def structure_of(trained: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The learned structure that fixes deployed shapes: LGC masks, FLGC assignments."""
    structure = {}
    for name, m in trained.named_modules():
        if isinstance(m, LearnedGroupConv):
            structure[name] = {"mask": m.mask.detach().cpu().clone(), "stage": m.stage.detach().cpu().clone()}
        elif isinstance(m, FLGConv):
            in_group, out_group = m.assignments()
            structure[name] = {"in_group": in_group.cpu().clone(), "out_group": out_group.cpu().clone()}
    return structure


def _restore_structure(model: nn.Module, structure: dict) -> None:
    modules = dict(model.named_modules())
    for name, st in structure.items():
        m = modules[name]
        if isinstance(m, FLGConv):
            m.in_group.copy_(st["in_group"])
            m.out_group.copy_(st["out_group"])
            m.frozen.fill_(True)
        else:
            m.mask.copy_(st["mask"])
            m.stage.copy_(st["stage"])


def save_condensed(path: Path, deployed: nn.Module, trained: nn.Module, model_spec: dict, input_shape: list[int],
                   classifier_keep: float | None = None, structure_edits: dict | None = None,
                   sparsified: dict | None = None) -> None:
    """`sparsified`: the `learnsparse.sparsify` arguments that turned the registry model into
    the trained one (sparsity=flgc/lgc on any model), replayed by `load`."""
    save_atomic({
        "format": FORMAT, "version": VERSION, "model": dict(model_spec), "input_shape": list(input_shape),
        "sparsify": dict(sparsified) if sparsified else None,
        "structure": structure_of(trained), "structure_edits": structure_edits or {},
        "classifier_keep": classifier_keep,
        "state_dict": {k: v.detach().cpu() for k, v in deployed.state_dict().items()},
    }, path)


def load(path: str | Path, map_location="cpu") -> nn.Module:
    """Rebuild a deployed model from `condensed.pt` (no code is unpickled)."""
    from learnsparse.models import create_model

    blob = read_weights_only(path, "condensed model")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a learnsparse condensed model")
    model = create_model(**blob["model"]).eval()
    if blob.get("sparsify"):
        sparsify(model, **blob["sparsify"])
    with torch.no_grad():
        _restore_structure(model, blob["structure"])
        convert_modules(model)
    replay(model, blob.get("structure_edits") or {}, torch.zeros(1, *blob["input_shape"]))
    with torch.no_grad():
        if blob.get("classifier_keep"):
            name, linear = _last_linear(model)
            model.set_submodule(name, prune_classifier_inputs(linear, blob["classifier_keep"]))
    model.load_state_dict(blob["state_dict"])
    if (blob.get("structure_edits") or {}).get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model.to(map_location).eval()


def save_pt2(path: Path, deployed: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch dimension; loads with torch.export.load alone."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(deployed, (example,), dynamic_shapes=({0: batch},))
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Raised for buffers that share storage (index tensors); the archive is still complete.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(program, str(path))
    return program


# Protocol buffers cannot hold 2 GiB; below this the weights go inside model.onnx itself, so
# the one file is the whole model.
ONNX_EMBED_LIMIT = 1_800_000_000


def save_onnx(path: Path, deployed: nn.Module, example: torch.Tensor, rtol: float = 1e-5) -> tuple[float, list[str]]:
    """Export to ONNX and check it with onnxruntime; returns the max difference found and the
    files written: `model.onnx` alone, or with `model.onnx.data` when the weights are too
    large to embed (both files are then needed, side by side)."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        raise UserError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'learnsparse[onnx]'") from e
    batch = torch.export.Dim("batch", min=1, max=65536)
    weight_bytes = sum(t.numel() * t.element_size() for t in deployed.state_dict().values())
    external = weight_bytes > ONNX_EMBED_LIMIT
    data_file = path.with_name(path.name + ".data")
    data_file.unlink(missing_ok=True)  # a stale one from an earlier export would mislead
    # The exporter and its graph optimizer narrate every step on stdout and through logging;
    # the report says what matters (the check against onnxruntime below).
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(deployed, (example,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
                              verbose=False, external_data=external)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    with torch.no_grad():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = torch.randn((3, *example.shape[1:]), generator=torch.Generator().manual_seed(1))
        expected = deployed(x.to(example.device)).float().cpu().numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max())
    if not diff <= rtol * max(scale, 1e-12) * 10:  # ORT's kernels round differently from ATen's
        path.unlink(missing_ok=True)
        data_file.unlink(missing_ok=True)
        raise UserError(f"ONNX model differs from the exported model under onnxruntime: max |Δ| = {diff:.3g}")
    return diff, [str(path), *([str(data_file)] if data_file.exists() else [])]
