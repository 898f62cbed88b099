"""Files an export writes: condensed.pt, model.pt2, model.onnx.

`condensed.pt` holds only plain tensors and values (it loads with `weights_only=True`): the
deployed weights and the architecture record of the deployed model — the trained model's
`_target_` and arguments, the edits that made it (sparsify, convert, structure passes, …) and
its learned structure. `load()` rebuilds the deployed model from the record.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from learnsparse.core.checkpoint_io import read_weights_only, save_atomic
from learnsparse.core.errors import UserError, first_line
from learnsparse.core.graph_capture import graph_form, quiet_onnx_export
from learnsparse.core.record import architecture_record, rebuild

FORMAT = "learnsparse.condensed"
VERSION = 2


def save_condensed(path: Path, deployed: nn.Module, model_config: dict, input_shape: list[int]) -> None:
    """`deployed` carries its edits (declared by `condense`); `model_config` is the trained
    model's `_target_` node."""
    save_atomic({
        "format": FORMAT, "version": VERSION, "record": architecture_record(deployed, model_config),
        "input_shape": list(input_shape),
        "state_dict": {k: v.detach().cpu() for k, v in deployed.state_dict().items()},
    }, path)


def load(path: str | Path, map_location="cpu") -> nn.Module:
    """Rebuild a deployed model from `condensed.pt` (no code is unpickled)."""
    blob = read_weights_only(path, "condensed model")
    if getattr(blob, "get", None) is None or blob.get("format") != FORMAT:  # not a dict: not ours
        raise UserError(f"{path} is not a learnsparse condensed model")
    record = blob["record"] if blob.get("version", 1) >= 2 else record_from_version_1(blob)
    try:
        model = rebuild(record).eval()
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"{path}: the deployed model cannot be rebuilt ({first_line(e)})") from e
    model.input_shape = list(blob["input_shape"])
    return model.to(map_location).eval()


def record_from_version_1(blob: dict) -> dict:
    """Files written before the record: registry name, sparsify arguments, masks, pass edits."""
    edits = [{"op": "sparsify", **blob["sparsify"]}] if blob.get("sparsify") else []
    passes = dict(blob.get("structure_edits") or {})
    edits += [{"op": "convert", "structure": blob.get("structure", {})},
              {"op": "structure_passes", "edits": passes, "input_shape": blob["input_shape"]}]
    if blob.get("classifier_keep") and blob["classifier_keep"] < 1:
        edits.append({"op": "prune_classifier", "keep": blob["classifier_keep"]})
    if passes.get("channels_last"):
        edits.append({"op": "memory_format", "channels_last": True})
    return {"model": {"_target_": "learnsparse.models.create_model", **blob["model"]}, "edits": edits,
            "structure": {}}


def save_pt2(deployed: nn.Module, example: torch.Tensor, path: str | Path) -> torch.export.ExportedProgram:
    """`deployed` (from `condense` or `load`) as a torch.export program with a dynamic batch
    dimension, written to `path` (it loads with torch.export.load alone); returns the program."""
    path = Path(path)
    example = _example(example)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(graph_form(deployed), (example.contiguous(),), dynamic_shapes=({0: batch},))
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Raised for buffers that share storage (index tensors); the archive is still complete.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(program, str(path))
    return program


def _example(example) -> torch.Tensor:
    """The example batch, given bare or as torch.export's tuple of one tensor."""
    if isinstance(example, (tuple, list)) and len(example) == 1:
        example = example[0]
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example: a tensor (a batch of the model's inputs), got {type(example).__name__}")
    return example


# Protocol buffers cannot hold 2 GiB; below this the weights go inside model.onnx itself, so
# the one file is the whole model.
ONNX_EMBED_LIMIT = 1_800_000_000


def save_onnx(deployed: nn.Module, example: torch.Tensor, path: str | Path,
              rtol: float = 1e-5) -> tuple[float, list[str]]:
    """`deployed` (from `condense` or `load`) as ONNX with a dynamic batch dimension, written to
    `path` and checked with onnxruntime; returns the max difference found and the files
    written: `path` alone, or with `path.data` when the weights are too large to embed (both
    files are then needed, side by side)."""
    path = Path(path)
    example = _example(example)
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
    with quiet_onnx_export():
        torch.onnx.export(graph_form(deployed), (example.contiguous(),), str(path), dynamo=True,
                          dynamic_shapes=({0: batch},), verbose=False, external_data=external)
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
