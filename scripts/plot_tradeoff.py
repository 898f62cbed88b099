"""Accuracy against cost, one point per configuration (mean over its seeds, error bars one
standard deviation): test top-1 vs deployed multiply-adds, and vs measured latency.

    python scripts/plot_tradeoff.py runs/igc [runs/lenet ...] --png tradeoff.png [--latency --batch 64]

Reads each run folder <study>/<row>/seed<k>/ (what study.py leaves, or any training run with
an exported model): the final top-1 from metrics.jsonl, deployed MACs and parameters from
export/report.json. With --latency every run's export/condensed.pt is timed in one process,
interleaved, median of --rounds rounds, at --threads threads. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch


def read_runs(studies: list[Path]) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for study in studies:
        for metrics in sorted(study.glob("*/*/metrics.jsonl")):
            run = metrics.parent
            report = run / "export" / "report.json"
            if not report.is_file():
                continue
            last = json.loads(metrics.read_text().splitlines()[-1])
            rep = json.loads(report.read_text())
            result = run / "result.json"
            label = json.loads(result.read_text()).get("label") if result.is_file() else None
            rows.setdefault(label or run.parent.name, []).append(
                {"run": run, "top1": last["val_top1"], "macs": rep["macs_after"], "params": rep["params_after"],
                 "input_shape": rep["input_shape"]})
    return rows


def measure_latency(rows: dict[str, list[dict]], batch: int, threads: int, rounds: int) -> None:
    from learnsparse.core.runtimes import interleaved_ms
    from learnsparse.export import load

    torch.set_num_threads(threads)
    runners = {}
    for runs in rows.values():
        for r in runs:
            model = load(r["run"] / "export" / "condensed.pt").eval()
            x = torch.randn(batch, *r["input_shape"])
            runners[str(r["run"])] = (lambda m=model, x=x: m(x))
    with torch.no_grad():
        ms = interleaved_ms(runners, rounds=rounds)
    for runs in rows.values():
        for r in runs:
            r["ms"] = ms[str(r["run"])]


def summary(rows: dict[str, list[dict]]) -> list[dict]:
    out = []
    for label, runs in rows.items():
        accs = [r["top1"] for r in runs]
        entry = {"label": label, "n": len(runs), "top1": statistics.mean(accs),
                 "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                 "macs": statistics.mean(r["macs"] for r in runs), "params": statistics.mean(r["params"] for r in runs)}
        if all("ms" in r for r in runs):
            entry["ms"] = statistics.mean(r["ms"] for r in runs)
        out.append(entry)
    return out


def plot(points: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    axes_for = [("macs", "deployed multiply-adds per image (millions)", 1e-6)]
    if all("ms" in p for p in points):
        axes_for.append(("ms", "measured latency (ms per batch)", 1.0))
    fig, axes = plt.subplots(1, len(axes_for), figsize=(6.5 * len(axes_for), 4.5), squeeze=False)
    for ax, (key, xlabel, scale) in zip(axes[0], axes_for):
        for p in points:
            ax.errorbar(p[key] * scale, p["top1"], yerr=p["std"], fmt="o", capsize=4, label=p["label"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test top-1 % (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def markdown(points: list[dict]) -> str:
    latency = all("ms" in p for p in points)
    head = "| configuration | deployed params | deployed MACs / image |" + (" latency ms |" if latency else "") \
        + " test top-1 % (mean ± std) | seeds |"
    lines = [head, "| --- | ---: | ---: |" + (" ---: |" if latency else "") + " ---: | ---: |"]
    for p in points:
        lines.append(f"| {p['label']} | {round(p['params']):,} | {round(p['macs']):,} |"
                     + (f" {p['ms']:.2f} |" if latency else "") + f" {p['top1']:.2f} ± {p['std']:.2f} | {p['n']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="+", type=Path, help="folders holding <row>/seed<k>/ runs")
    ap.add_argument("--png", type=Path, default=Path("tradeoff.png"))
    ap.add_argument("--latency", action="store_true", help="time every exported model (interleaved, median)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    rows = read_runs(args.studies)
    if not rows:
        raise SystemExit(f"error: no exported runs under {', '.join(map(str, args.studies))} "
                         "(each needs <row>/seed<k>/metrics.jsonl and export/report.json)")
    if args.latency:
        measure_latency(rows, args.batch, args.threads, args.rounds)
    points = summary(rows)
    plot(points, args.png)
    print(markdown(points))
    print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
