"""The export report: totals before and after, latency, max difference, one row per layer."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from learnsparse.core.counting import count_params, macs_by_module
from learnsparse.core.layer_types import dense_equivalent
from learnsparse.core.runtimes import interleaved_ms, runner, target_runtime
from learnsparse.core.text_table import format_table

from .condense import ExportResult


def build_report(trained: nn.Module, result: ExportResult, example: torch.Tensor, *, latency_rounds: int = 20,
                 latency_batch: int | None = None, target: str | None = "eager",
                 start: nn.Module | None = None) -> dict:
    """Latency is measured in the target runtime for the dense equivalent (what the user had)
    and the export, side by side; the trained model, as it left training, in eager PyTorch is a
    secondary figure (`latency_ms_masked_eager`, named from when every trained layer was masked).
    `start` is the network training began from (before any edit); without it, the trained model.
    It matters once training has thinned the network (the in-training shrink): the trained model
    is then already smaller than what the user had, and the dense figures must not be its own."""
    single = example[:1]
    dense = dense_equivalent(start if start is not None else trained)
    macs_before, macs_after = macs_by_module(trained, single), macs_by_module(result.model, single)
    timing_input = single.expand(latency_batch, *single.shape[1:]).contiguous() if latency_batch else example
    runtime = target_runtime(target).name
    with tempfile.TemporaryDirectory() as work:
        threads = torch.get_num_threads()
        latency = interleaved_ms({
            "dense": runner(dense, runtime, timing_input, threads, Path(work)),
            "exported": runner(result.model, runtime, timing_input, threads, Path(work)),
            "masked": runner(trained, "eager", timing_input, threads, Path(work)),
        }, rounds=latency_rounds)
    rows = []
    trained_modules, exported_modules = dict(trained.named_modules()), dict(result.model.named_modules())

    def row(name, kind_before, kind_after):
        before, after = trained_modules[name], exported_modules[name]
        return {"layer": name, "trained": kind_before, "deployed": kind_after,
                "params_before": count_params(before), "params_after": count_params(after),
                "macs_before": int(macs_before.get(name, 0)), "macs_after": int(macs_after.get(name, 0))}

    for name, kind_before, kind_after in result.converted:
        rows.append(row(name, kind_before, kind_after))
    # Layers no pass names but whose shape followed (a reader of removed channels, e.g. the
    # classifier after the last conv lost channels) are rows too: every changed layer is listed.
    covered = [r["layer"] for r in rows]
    for name, after in exported_modules.items():
        before = trained_modules.get(name)
        if not name or before is None or next(after.children(), None) is not None:
            continue
        if any(name == c or name.startswith(c + ".") for c in covered):
            continue
        changed = (count_params(before) != count_params(after) or macs_before.get(name, 0) != macs_after.get(name, 0)
                   or type(before) is not type(after))
        if changed:
            rows.append(row(name, layer_shape(before), layer_shape(after)))
    order = {n: i for i, n in enumerate(trained_modules)}
    rows.sort(key=lambda r: order.get(r["layer"], len(order)))
    return {
        "params_dense": count_params(dense), "macs_dense": macs_by_module(dense, single)[""],
        "params_before": count_params(trained), "params_after": count_params(result.model),
        "macs_before": macs_before[""], "macs_after": macs_after[""],
        "latency_batch": int(timing_input.shape[0]), "latency_rounds": latency_rounds,
        "latency_target": target or "eager", "latency_runtime": runtime,
        "latency_ms_dense": latency["dense"], "latency_ms_after": latency["exported"],
        "speedup": latency["dense"] / latency["exported"],
        "latency_ms_masked_eager": latency["masked"], "speedup_vs_masked_eager": latency["masked"] / latency["exported"],
        # Said loudly (format_report, and `learnsparse-export` logs a warning): an export that runs
        # slower than the dense network in the runtime it was made for lost what it promised.
        "slower_than_dense": latency["exported"] > latency["dense"],
        "tactics": result.tactics, "widths": result.widths,
        "max_abs_diff": result.max_abs_diff, "output_scale": result.output_scale, "exact": result.exact,
        "layers": rows,
    }


def layer_shape(m: nn.Module) -> str:
    """`Conv2d 16→32`, `Linear 800→10`, `BatchNorm2d 16`: a layer's kind and width."""
    if isinstance(m, nn.Conv2d):
        return f"{type(m).__name__} {m.in_channels}→{m.out_channels}"
    if isinstance(m, nn.Linear):
        return f"{type(m).__name__} {m.in_features}→{m.out_features}"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return f"{type(m).__name__} {m.num_features}"
    return type(m).__name__


def format_report(report: dict) -> str:
    def ratio(a, b):
        return f"{a / b:.2f}x" if b else "-"

    # Every total is compared with the dense network, what the user had without the export. The
    # trained model sits between: masked layers count in full, layers already condensed during
    # training count as they train (so it can hold fewer parameters than an export that chose
    # a dense form where that runs faster).
    dense_params, dense_macs = report["params_dense"], report["macs_dense"]
    totals = format_table(["", "dense", "trained", "exported", "dense / exported"], [
        ["params", f"{dense_params:,}", f"{report['params_before']:,}", f"{report['params_after']:,}",
         ratio(dense_params, report["params_after"])],
        ["MACs / image", f"{int(dense_macs):,}", f"{int(report['macs_before']):,}", f"{int(report['macs_after']):,}",
         ratio(dense_macs, report["macs_after"])],
        [f"latency ms (batch {report['latency_batch']}, {report['latency_target']})",
         f"{report['latency_ms_dense']:.2f}", "", f"{report['latency_ms_after']:.2f}", f"{report['speedup']:.2f}x"],
    ], right={1, 2, 3, 4})
    lines = [*totals,
             f"max |trained - exported| = {report['max_abs_diff']:.3g} (output scale {report['output_scale']:.3g})"
             + ("" if report["exact"] else "  [lossy: classifier_keep]"),
             f"the trained model, as it left training, in eager PyTorch: {report['latency_ms_masked_eager']:.2f} ms "
             f"(export {report['speedup_vs_masked_eager']:.2f}x faster)"]
    if report.get("budget"):
        lines.append(budget_line(report["budget"]))
    if report.get("slower_than_dense"):
        lines.insert(0, f"WARNING: the export is SLOWER than the dense network in {report['latency_target']} "
                        f"({report['speedup']:.2f}x dense at batch {report['latency_batch']}); deploy the dense "
                        f"network, or export with target={report['latency_target']} measure=true")
    if report.get("widths"):
        w = report["widths"]
        lines.append(f"thinned layers' widths, fastest in {report['latency_target']}: {w['form']} "
                     f"({len(w['layers'])} layers)")
    if report.get("tactics"):
        chosen = ", ".join(f"{name} {t['form']}" for name, t in report["tactics"].items())
        how = (f"fastest in {report['latency_target']}" if any("ms" in t for t in report["tactics"].values())
               else "by the multiply-add rule (measure=true times them)")
        lines.append(f"form per learned layer, {how}: {chosen}")
    lines.append("")
    layers = [[r["layer"], r["trained"], r["deployed"], f"{r['params_before']:,}", f"{r['params_after']:,}",
               f"{int(r['macs_before']):,}", f"{int(r['macs_after']):,}"] for r in report["layers"]]
    lines += format_table(["layer", "trained", "deployed", "params", "→ params", "MACs", "→ MACs"], layers,
                          right={3, 4, 5, 6})
    return "\n".join(lines)


def budget_summary(ckpt: dict, report: dict) -> dict | None:
    """The run's budget (a plugin's checkpoint state, sparsity/budget.py) beside what this export
    achieved: its MACs or parameters over the network the run started from. A latency budget
    shows the latency fraction the run measured when it chose, and the MACs it reached."""
    for state in (ckpt.get("hooks") or {}).values():
        budget = state.get("budget") if isinstance(state, dict) else None
        if not budget or not budget.get("dense"):
            continue
        counted = "params" if budget["kind"] == "params" else "macs"
        exported = report["params_after"] if counted == "params" else report["macs_after"]
        out = {"kind": budget["kind"], "target": budget["fraction"], "counted": counted, "dense": budget["dense"],
               "exported": exported, "achieved": exported / budget["dense"], "steps": budget.get("steps"),
               "round_to": budget.get("round_to")}
        if budget["kind"] == "latency":
            out.update(latency_target=budget["target"], latency_batch=budget["batch"],
                       latency_measured_in_training=(budget.get("latency") or {}).get(budget.get("done")))
        return out
    return None


def budget_line(b: dict) -> str:
    line = (f"budget: {b['kind']} {b['target']:g} of the starting network's {int(b['dense']):,} {b['counted']}; "
            f"exported {int(b['exported']):,} = {b['achieved']:.4f}")
    if b["kind"] == "latency" and b.get("latency_measured_in_training") is not None:
        line += (f" (latency {b['latency_measured_in_training']:.3f} of the starting network's in "
                 f"{b['latency_target']}, batch {b['latency_batch']}, measured when training chose)")
    return line
