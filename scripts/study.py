"""Run a study: rows of training configurations × seeds, each run kept in its own folder so
that a long budget can be run in pieces (finished runs are read back, interrupted ones resume
from their last checkpoint) or split over processes, and each run exported and measured the
same way. Used by compare_group_convs.py and compare_connectivity.py; their tables and
plot_tradeoff.py read the folders it leaves:

    <out>/<row>/seed<k>/metrics.jsonl, checkpoints/, export/report.json, result.json
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import torch

from learnsparse import train
from learnsparse.core.config_dir import compose
from learnsparse.export.from_checkpoint import export_checkpoint


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def run_once(root: Path, label: str, overrides: list[str], seed: int, budget: dict, measure=None) -> dict:
    """Train one row at one seed (or read back the finished run), export its last checkpoint
    (every learned layer in its sparse form, verified), and return its result: top-1, the
    export report's params and MACs, and whatever `measure(report, run folder)` adds."""
    out = root / slug(label) / f"seed{seed}"
    done = out / "result.json"
    if done.is_file() and json.loads(done.read_text())["budget"] == budget:
        return json.loads(done.read_text())
    cfg = compose([*overrides, f"seed={seed}", f"trainer.epochs={budget['epochs']}",
                   f"data.dataset.train_subset={budget['train_subset']}", "logger=none", f"paths.output_dir={out}",
                   "trainer.resume=auto"])
    top1 = train(cfg)["val_top1"]
    report = export_checkpoint(compose([f"checkpoint={out}/checkpoints/last.pt", "formats=[pt]", "target=null",
                                        "latency_rounds=3", "latency_batch=8"], config_name="export"))
    result = {"budget": budget, "label": label, "seed": seed, "top1": top1, "params": report["params_after"],
              "macs": report["macs_after"], **(measure(report, out) if measure else {})}
    done.write_text(json.dumps(result))
    return result


def run_rows(root: Path, rows: dict[str, list[str]], seeds: list[int], budget: dict,
             measure=None) -> dict[str, list[dict]]:
    results = {}
    for label, overrides in rows.items():
        results[label] = []
        for seed in seeds:
            results[label].append(run_once(root, label, overrides, seed, budget, measure))
            print(f"{label} seed {seed}: {results[label][-1]['top1']:.2f}", flush=True)
    return results


def markdown_table(results: dict[str, list[dict]], columns: dict[str, str], first: str = "") -> str:
    """One row per study row: `columns` (result key → header, mean over seeds), then top-1
    mean ± std and every seed's top-1."""
    head = [first, *columns.values(), "test top-1 % (mean ± std)", "runs"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 2) + " --- |"]
    for label, runs in results.items():
        accs = [r["top1"] for r in runs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        cells = [f"{round(statistics.mean(r[k] for r in runs)):,}" for k in columns]
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {statistics.mean(accs):.2f} ± {std:.2f} | {', '.join(f'{a:.2f}' for a in accs)} |")
    return "\n".join(lines)


def add_common_arguments(ap, rows: int, epochs: int, train_subset: int) -> None:
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--train-subset", type=int, default=train_subset)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True,
                    help="keep each run here; finished runs are reused, interrupted ones resumed")
    ap.add_argument("--rows", nargs="+", type=int, choices=range(rows), default=list(range(rows)),
                    help="which rows to run (0-based, in the order of the table)")


def select(rows: dict, indices: list[int]) -> dict:
    return {label: overrides for i, (label, overrides) in enumerate(rows.items()) if i in indices}


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
