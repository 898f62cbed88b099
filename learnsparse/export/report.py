"""The export report: totals before and after, latency, max difference, one row per layer."""
from __future__ import annotations

import torch
import torch.nn as nn

from .condense import ExportResult
from .measure import count_params, interleaved_latency, macs_by_module


def build_report(trained: nn.Module, result: ExportResult, example: torch.Tensor, *, latency_rounds: int = 20,
                 latency_batch: int | None = None) -> dict:
    single = example[:1]
    macs_before, macs_after = macs_by_module(trained, single), macs_by_module(result.model, single)
    timing_input = single.expand(latency_batch, *single.shape[1:]).contiguous() if latency_batch else example
    latency = interleaved_latency({"trained": trained, "exported": result.model}, timing_input, rounds=latency_rounds)
    rows = []
    trained_modules, exported_modules = dict(trained.named_modules()), dict(result.model.named_modules())
    for name, kind_before, kind_after in result.converted:
        before, after = trained_modules[name], exported_modules[name]
        rows.append({"layer": name, "trained": kind_before, "deployed": kind_after,
                     "params_before": count_params(before), "params_after": count_params(after),
                     "macs_before": macs_before.get(name, 0), "macs_after": macs_after.get(name, 0)})
    return {
        "params_before": count_params(trained), "params_after": count_params(result.model),
        "macs_before": macs_before[""], "macs_after": macs_after[""],
        "latency_batch": int(timing_input.shape[0]), "latency_rounds": latency_rounds,
        "latency_ms_before": latency["trained"] * 1e3, "latency_ms_after": latency["exported"] * 1e3,
        "speedup": latency["trained"] / latency["exported"],
        "max_abs_diff": result.max_abs_diff, "output_scale": result.output_scale, "exact": result.exact,
        "layers": rows,
    }


def format_report(report: dict) -> str:
    def ratio(a, b):
        return f"{a / b:.2f}x" if b else "-"

    lines = [
        f"{'':<26}{'trained':>16}{'exported':>16}{'ratio':>10}",
        f"{'params':<26}{report['params_before']:>16,}{report['params_after']:>16,}"
        f"{ratio(report['params_before'], report['params_after']):>10}",
        f"{'MACs / image':<26}{report['macs_before']:>16,}{report['macs_after']:>16,}"
        f"{ratio(report['macs_before'], report['macs_after']):>10}",
        f"{'latency ms (batch ' + str(report['latency_batch']) + ')':<26}{report['latency_ms_before']:>16.2f}"
        f"{report['latency_ms_after']:>16.2f}{report['speedup']:>9.2f}x",
        f"max |trained - exported| = {report['max_abs_diff']:.3g} (output scale {report['output_scale']:.3g})"
        + ("" if report["exact"] else "  [lossy: classifier_keep]"),
        "",
        f"{'layer':<32}{'trained':<18}{'deployed':<22}{'params':>18}{'MACs':>24}",
    ]
    for r in report["layers"]:
        lines.append(f"{r['layer']:<32}{r['trained']:<18}{r['deployed']:<22}"
                     f"{r['params_before']:>8,} → {r['params_after']:<8,}{r['macs_before']:>11,} → {r['macs_after']:<11,}")
    return "\n".join(lines)
