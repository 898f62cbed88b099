"""Where the time goes in ONNX Runtime, per op type: the dense network, the fixed-group twin and
the export of a bench_deploy case, each profiled by ONNX Runtime's own profiler.

    python scripts/profile_graph.py resnet18_flgc_balanced_32_b64 [--runs 30] [--threads 2]

The export is made for ONNX Runtime (`target=onnxruntime`) and also with every learned layer
sparse (`target=null`). Per network: milliseconds per run spent in each op type (kernel time,
summed over the graph's nodes, mean over --runs runs after warm-up), and the node count. The
difference between an export and the twin, op type by op type, is what its structure costs.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from learnsparse.export import condense_with_details, dense_equivalent
from learnsparse.export import save_onnx

from bench_cases import CASES


def profile(model: torch.nn.Module, x: torch.Tensor, threads: int, runs: int, work: Path, name: str) -> dict:
    path = work / f"{name}.onnx"
    save_onnx(model.eval(), x, path)
    nodes = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(work / name)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    warmup = 5
    for _ in range(warmup + runs):
        session.run(None, feed)
    trace = json.loads(Path(session.end_profiling()).read_text())
    # Only the runs after warm-up: those whose model_run started at or after the first measured one.
    starts = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e["name"] == "model_run")
    t0 = starts[warmup]
    per_op: dict[str, float] = collections.defaultdict(float)
    total = 0.0
    for event in trace:
        if event["ts"] < t0:
            continue
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1000 / runs
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            total += event["dur"] / 1000 / runs
    return {"ops": dict(per_op), "nodes": dict(nodes), "total": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    case = CASES[args.case]()
    x = torch.randn(case.batch, *case.input_shape)
    example = torch.randn(2, *case.input_shape)
    networks = {"dense": dense_equivalent(case.trained)}
    if case.twin is not None:
        networks["twin"] = case.twin
    networks["export (target=onnxruntime)"] = condense_with_details(
        case.trained, example, target="onnxruntime", batch=case.batch, threads=args.threads, measure=True).model
    networks["export (every layer sparse)"] = condense_with_details(case.trained, example).model
    with tempfile.TemporaryDirectory() as work:
        results = {k: profile(m, x, args.threads, args.runs, Path(work), f"n{i}")
                   for i, (k, m) in enumerate(networks.items())}
    ops = sorted({op for r in results.values() for op in r["ops"]},
                 key=lambda op: -max(r["ops"].get(op, 0) for r in results.values()))
    print(f"## {args.case}: ONNX Runtime CPU, {args.threads} threads, batch {case.batch}, "
          f"mean of {args.runs} runs; ms per run by op type (nodes)")
    print("| op type | " + " | ".join(results) + " |")
    print("| --- |" + " ---: |" * len(results))
    for op in ops:
        print(f"| {op} | " + " | ".join(f"{r['ops'].get(op, 0):.2f} ({r['nodes'].get(op, 0)})" for r in results.values())
              + " |")
    print("| **kernels** | " + " | ".join(f"{sum(r['ops'].values()):.2f}" for r in results.values()) + " |")
    print("| **run** | " + " | ".join(f"{r['total']:.2f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
