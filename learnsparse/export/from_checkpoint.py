"""`export_checkpoint(cfg)`: a training checkpoint in, export/ files and a report out."""
from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

import torch

from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.core.errors import UserError, first_line
from learnsparse.core.runtimes import targets

from .artifacts import save_condensed, save_onnx, save_pt2
from .condense import condense_with_details
from .report import budget_summary, build_report, format_report

log = logging.getLogger("learnsparse")
FORMATS = ("pt", "pt2", "onnx")


def checkpoint_record(ckpt: dict, path: Path) -> dict:
    """The architecture record a checkpoint carries. Checkpoints written before records had
    one get it from their config: the model node, then the sparsity plugins built on it (they
    declare the edits they make, as in training)."""
    if ckpt.get("record"):
        return ckpt["record"]
    config = ckpt.get("config") or {}
    if "_target_" not in (config.get("model") or {}):
        raise UserError(f"checkpoint {path} has no architecture record or model config; "
                        f"it was not written by learnsparse-train")
    from omegaconf import OmegaConf

    from learnsparse.core.plugins import build_plugins, with_current_targets
    from learnsparse.core.record import architecture_record, rebuild

    model = rebuild({"model": config["model"], "edits": [], "structure": {}})
    build_plugins(OmegaConf.create({"sparsity": with_current_targets(config.get("sparsity") or {})}), model)
    return architecture_record(model, config["model"])


def model_from_checkpoint(ckpt: dict, path: Path) -> tuple[torch.nn.Module, dict, list[int]]:
    """(the trained model with the checkpoint's weights, its model config, its input shape)."""
    from learnsparse.core.record import model_name, rebuild

    record = checkpoint_record(ckpt, path)
    try:
        model = rebuild(record)
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError) as e:
        raise UserError(f"checkpoint {path} does not fit its model {model_name(record['model'])} "
                        f"({first_line(e)})") from e
    input_shape = ckpt.get("input_shape")
    if not input_shape:
        raise UserError(f"checkpoint {path} does not record the input shape")
    return model.eval(), dict(record["model"]), list(input_shape)


def resolve_checkpoint(pattern: str) -> Path:
    """A checkpoint path, or a glob (`outputs/quickstart/*/checkpoints/last.pt`) that names
    the newest matching file: the docs' commands then run as written, whatever a run's
    folder is called."""
    if not any(c in pattern for c in "*?["):
        return Path(pattern)
    matches = sorted(map(Path, glob.glob(os.path.expanduser(pattern))), key=lambda p: p.stat().st_mtime)
    if not matches:
        raise UserError(f"checkpoint={pattern}: no file matches")
    if len(matches) > 1:
        log.info("checkpoint=%s: the newest of %d matches, %s", pattern, len(matches), matches[-1])
    return matches[-1]


def load_trained(checkpoint: str | Path) -> torch.nn.Module:
    """The trained model a `learnsparse-train` checkpoint holds, in eval mode: what `condense`
    takes. Its input shape is `model.input_shape` (one image, without the batch)."""
    path = resolve_checkpoint(str(checkpoint))
    model, _, input_shape = model_from_checkpoint(load_checkpoint(path), path)
    model.input_shape = input_shape
    return model


def export(checkpoint: str | Path, **options) -> dict:
    """`learnsparse-export` from Python: `options` are the keys of its config (export.yaml),
    e.g. `export(path, formats=["pt", "onnx"], output_dir="deploy")`. Returns the report."""
    from omegaconf import OmegaConf

    from learnsparse.core.config_dir import compose

    cfg = compose([f"checkpoint={checkpoint}"], config_name="export")
    try:
        cfg = OmegaConf.merge(cfg, options)
    except Exception as e:
        raise UserError(f"export: {first_line(e)}") from e
    return export_checkpoint(cfg)


def export_checkpoint(cfg) -> dict:
    previous_threads = torch.get_num_threads()
    try:
        return _export_checkpoint(cfg)
    finally:
        torch.set_num_threads(previous_threads)  # `threads` is for this export, not the process


def _optional_bool(value) -> bool | None:
    return None if value is None else bool(value)


def _export_checkpoint(cfg) -> dict:
    # `formats=pt2` on the command line is a string: one format, not a list of letters.
    formats = [cfg.formats] if isinstance(cfg.formats, str) else list(cfg.formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"formats: unknown {unknown}; choose from {list(FORMATS)}")
    if cfg.get("target") is not None and cfg.target not in targets():
        raise UserError(f"target={cfg.target}: choose from {sorted(targets())} (or null: every learned layer sparse)")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    path = resolve_checkpoint(str(cfg.checkpoint))
    ckpt = load_checkpoint(path)
    trained, model_config, input_shape = model_from_checkpoint(ckpt, path)
    g = torch.Generator().manual_seed(0)
    example = torch.randn((int(cfg.verify_batch), *input_shape), generator=g)

    batch = int(cfg.get("batch") or cfg.latency_batch)
    target = cfg.get("target", "eager")
    result = condense_with_details(trained, example, classifier_keep=cfg.classifier_keep, rtol=float(cfg.rtol),
                                   channels_last=_optional_bool(cfg.get("channels_last")), target=target,
                                   batch=batch, threads=cfg.threads, measure=bool(cfg.get("measure", False)))
    from learnsparse.core.record import model_name, rebuild

    # The dense network is the one training started from: the model its config builds, before any
    # edit (a shrink in training leaves the trained model already thinner than that).
    start = rebuild({"model": dict(model_config), "edits": []}).eval()
    report = build_report(trained, result, example, latency_rounds=int(cfg.latency_rounds), latency_batch=batch,
                          target=target, start=start)

    report.update(checkpoint=str(path), model=model_name(model_config), input_shape=input_shape)
    budget = budget_summary(ckpt, report)
    if budget is not None:
        report["budget"] = budget  # target and achieved, on this export

    out = Path(cfg.output_dir) if cfg.output_dir else path.resolve().parent.parent / "export"
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    if "pt" in formats:
        save_condensed(out / "condensed.pt", result.model, model_config, input_shape)
        files["pt"] = str(out / "condensed.pt")
    if "pt2" in formats:
        save_pt2(result.model, example, out / "model.pt2")
        files["pt2"] = str(out / "model.pt2")
    if "onnx" in formats:
        report["onnx_max_abs_diff"], onnx_files = save_onnx(result.model, example, out / "model.onnx",
                                                            float(cfg.rtol))
        files["onnx"] = onnx_files[0]
        if len(onnx_files) > 1:  # weights over the protobuf limit: this file must sit beside model.onnx
            files["onnx weights"] = onnx_files[1]
    report["files"] = files
    report["report"] = str(out / "report.json")
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "report.json")
    report["table"] = format_report(report)
    if report["slower_than_dense"]:
        log.warning("the export runs at %.2fx the dense network's speed in %s (batch %d): slower than dense",
                    report["speedup"], report["latency_target"], report["latency_batch"])
    return report
