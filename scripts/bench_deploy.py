"""Deployment speed: the export against the dense network at its best, in every runtime a user
deploys with, and against the fixed-structure twin.

For each case (a model and its learned structure) three networks are timed, side by side in
one process: the dense equivalent (the trained model with its zeros baked into plain convs:
what a user has without learnsparse), the fixed-group twin where one exists (the same shape
with plain grouped convs and no gathers or permutations: the limit), and the learnsparse
export. Each runs in every runtime registered in learnsparse.core.runtimes (eager, eager_cl, compile, ort,
ort_as_is, pt2, aoti; `--help` lists them), the export made for each runtime's target.

All networks and runtimes of a case are timed in turn every round (interleaved), median of
--rounds rounds, after warm-up. A runtime that cannot build a network says why and is left
out of that case. Then "best export / best dense" and "best export / best twin", and the
deployment targets, each printed met or not.

    python scripts/bench_deploy.py                       # every case, 2 threads
    python scripts/bench_deploy.py --cases condensenet86_b64 lenet5_ssl_b256 --rounds 21
    python scripts/bench_deploy.py --device cuda         # the same table on a GPU
    python scripts/bench_deploy.py --direct --cases condensenet86_b1 condensenet86_b64   # the Python-API route
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_cases import CASES, Case

from learnsparse.core import runtimes as registry
from learnsparse.core.counting import macs_by_module
from learnsparse.core.graph_capture import graph_form, quiet_onnx_export
from learnsparse.core.runtimes import export_target, interleaved_ms, runner
from learnsparse.export import condense, condense_with_details, dense_equivalent

NETWORKS = ("dense", "twin", "export")


@dataclass
class Result:
    ms: dict  # (network, runtime) → median ms

    def best(self, network: str) -> float:
        """Speed (1/ms) of the network in its fastest runtime."""
        times = [t for (n, _), t in self.ms.items() if n == network]
        return 1.0 / min(times) if times else float("nan")

    def best_runtime(self, network: str) -> str:
        return min(((t, r) for (n, r), t in self.ms.items() if n == network))[1]

    def ratio(self, runtime: str) -> float:
        """dense ms / export ms in one runtime (NaN where either was not built)."""
        dense, export = self.ms.get(("dense", runtime)), self.ms.get(("export", runtime))
        return dense / export if dense and export else float("nan")

    def export_in_twins_best_runtime(self) -> float:
        runtime = self.best_runtime("twin")
        return self.ms[("twin", runtime)] / self.ms[("export", runtime)]


def run_case(case: Case, runtimes, device: torch.device, threads: int, rounds: int, work: Path) -> Result:
    torch.manual_seed(0)
    x = torch.randn(case.batch, *case.input_shape, device=device)
    example = torch.randn(2, *case.input_shape)
    trained = case.trained.eval()
    exports = {}
    for target in sorted({export_target(r) for r in runtimes}):
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            # measure=True: the export at its best in each runtime (forms timed there), as documented
            result = condense_with_details(trained, example, target=target, batch=case.batch, threads=threads,
                                           measure=True)
        exports[target] = result.model
        dense_layers = [n for n, t in result.tactics.items() if t["form"] == "dense"]
        print(f"  export for {target}: {len(result.tactics) - len(dense_layers)} learned layers sparse, "
              f"{len(dense_layers)} dense" + (f" ({', '.join(dense_layers[:6])}{' …' if len(dense_layers) > 6 else ''})"
                                               if dense_layers else ""), flush=True)
        if result.widths:
            widths = result.widths
            print(f"  export for {target}: thinned layers {widths['form']} (whole network, ms: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in widths["ms"].items()) + ")", flush=True)
    networks = {"dense": dense_equivalent(trained)}
    if case.twin is not None:
        networks["twin"] = case.twin.eval()
    one = example[:1]
    macs = {k: macs_by_module(graph_form(m), one)[""] for k, m in networks.items()}
    macs.update({f"export ({t})": macs_by_module(graph_form(m), one)[""] for t, m in exports.items()})
    print(f"## {case.name}: input {list(case.input_shape)}, batch {case.batch}; MACs/image "
          + ", ".join(f"{k} {v:,}" for k, v in macs.items()), flush=True)
    runners = {}
    for runtime in runtimes:
        for net in NETWORKS:
            model = exports[export_target(runtime)] if net == "export" else networks.get(net)
            if model is None:
                continue
            try:
                with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                    warnings.simplefilter("ignore")
                    runners[(net, runtime)] = runner(model.to(device), runtime, x, threads, work)
            except Exception as e:  # a runtime that cannot build this network: said, then skipped
                print(f"  {net} in {runtime}: not built ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    result = Result(interleaved_ms(runners, rounds=rounds))
    print_case(case, result, runtimes)
    return result


def print_case(case: Case, result: Result, runtimes) -> None:
    nets = [n for n in NETWORKS if any(k[0] == n for k in result.ms)]
    print("| runtime | " + " | ".join(f"{n} ms" for n in nets) + " | export / dense |")
    print("| --- | " + " | ".join("---:" for _ in nets) + " | ---: |")
    for runtime in runtimes:
        cells = [f"{result.ms[(n, runtime)]:.2f}" if (n, runtime) in result.ms else "—" for n in nets]
        ratio = (f"{result.ms[('dense', runtime)] / result.ms[('export', runtime)]:.2f}x"
                 if ("dense", runtime) in result.ms and ("export", runtime) in result.ms else "—")
        print(f"| {runtime} | " + " | ".join(cells) + f" | {ratio} |")
    best_dense, best_export = result.best("dense"), result.best("export")
    print(f"best dense: {result.best_runtime('dense')}; best export: {result.best_runtime('export')}; "
          f"best export / best dense = {best_export / best_dense:.2f}x")
    if "twin" in nets:
        print(f"best export / best twin = {best_export / result.best('twin'):.2f}x "
              f"(twin best in {result.best_runtime('twin')})")
    checks = [("(a) export ≥ dense in every runtime",
               (min(result.ms[("dense", r)] / result.ms[("export", r)] for r in runtimes
                    if ("dense", r) in result.ms and ("export", r) in result.ms), 1.0))]
    if ("dense", "ort") in result.ms and ("export", "ort") in result.ms:
        checks.append(("(e) ONNX Runtime: export ≥ dense", (result.ms[("dense", "ort")] / result.ms[("export", "ort")],
                                                              1.0)))
    checks += [(label, fn(result)) for label, fn in case.goals]
    for label, (value, goal) in checks:
        print(f"  {label}: {value:.2f} — {'met' if value >= goal else 'NOT met'}")


def onnx_nodes(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def run_direct(case: Case, threads: int, rounds: int, work: Path) -> None:
    """The Python-API route: `torch.onnx.export(condense(model, example))` called by hand, in
    ONNX Runtime, beside the dense network exported the same way."""
    torch.manual_seed(0)
    x = torch.randn(case.batch, *case.input_shape)
    trained = case.trained.eval()
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        networks = {"dense": dense_equivalent(trained), "direct": condense(trained, torch.randn(2, *case.input_shape))}
        nodes = {}
        for k, m in networks.items():
            with quiet_onnx_export():
                torch.onnx.export(m, (x[:1],), str(work / f"{k}.onnx"))
            nodes[k] = onnx_nodes(work / f"{k}.onnx")
        ms = interleaved_ms({k: runner(m, "ort_as_is", x, threads, work) for k, m in networks.items()},
                            rounds=rounds)
    flagged = {op: nodes["direct"][op] for op in ("Transpose", "Range", "ScatterND", "GatherElements")
               if nodes["direct"][op]}
    print(f"| {case.name} | {sum(nodes['dense'].values())} | {sum(nodes['direct'].values())} "
          f"({nodes['direct']['Gather']} Gather{', ' + str(flagged) if flagged else ''}) | {ms['dense']:.2f} | "
          f"{ms['direct']:.2f} | {ms['dense'] / ms['direct']:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--runtimes", nargs="+", choices=registry.runtimes(), default=registry.runtimes())
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--direct", action="store_true",
                    help="only the Python-API route: torch.onnx.export(condense(model, example)) vs dense, in ONNX Runtime")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible")
    print(f"# bench_deploy: torch {torch.__version__}, {args.threads} threads, device {device}, "
          f"{args.rounds} interleaved rounds, median")
    with tempfile.TemporaryDirectory() as work:
        if args.direct:
            print("| case | dense nodes | direct-route nodes | dense ms | direct ms | dense / direct |")
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name in args.cases:
            case = CASES[name]()  # built and exported on the CPU; each runtime moves its copy to the device
            if args.direct:
                run_direct(case, args.threads, args.rounds, Path(work))
            else:
                run_case(case, args.runtimes, device, args.threads, args.rounds, Path(work))
            # Compiled code of this case's networks goes: the next case's networks share
            # forward functions with them (same model class), and Dynamo counts its recompiles
            # per function.
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
