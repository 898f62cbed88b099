"""Deployment speed: the export against the dense network at its best, in every runtime a user
deploys with, and against the fixed-structure twin.

For each case (a model and its learned structure) three networks are timed, side by side in
one process: the dense equivalent (the trained model with its zeros baked into plain convs:
what a user has without learnsparse), the fixed-group twin where one exists (the same shape
with plain grouped convs and no gathers or permutations: the limit), and the learnsparse
export. Each runs in every runtime:

  eager     eager PyTorch, NCHW weights and inputs
  eager_cl  eager PyTorch, channels-last weights and inputs (the export as it is written)
  compile   torch.compile (inductor)
  ort       ONNX Runtime (the file learnsparse-export writes; CPU provider, same thread count,
            or the CUDA provider with --device cuda)
  pt2       the module of the torch.export program (model.pt2)
  aoti      AOTInductor (torch._inductor.aoti_compile_and_package on that program)

All networks and runtimes of a case are timed in turn every round (interleaved), median of
--rounds rounds, after warm-up. A runtime that cannot build a network says why and is left
out of that case. Then "best export / best dense" and "best export / best twin", and the
deployment targets, each printed met or not.

    python scripts/bench_deploy.py                       # every case, 2 threads
    python scripts/bench_deploy.py --cases condensenet86_b64 lenet5_ssl_b256 --rounds 21
    python scripts/bench_deploy.py --device cuda         # the same table on a GPU
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from learnsparse.export import condense_with_details, dense_equivalent
from learnsparse.export.artifacts import graph_form
from learnsparse.export.measure import macs_by_module
from learnsparse.export.runtimes import RUNTIMES, interleaved_ms, runner
from learnsparse.models import create_model
from learnsparse.models.condensenet import CondenseNet, _cifar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import flgc_model, trained_model  # noqa: E402  (the benchmark models' end states)

NETWORKS = ("dense", "twin", "export")


@dataclass
class Case:
    name: str
    trained: nn.Module
    input_shape: tuple[int, ...]
    batch: int
    twin: nn.Module | None = None
    targets: list = field(default_factory=list)  # (label, function of the result table → (value, goal))


# --- the cases ------------------------------------------------------------------------------

def condensenet86(batch: int) -> Case:
    trained = trained_model("condensenet86")
    twin = CondenseNet(_cifar(86, conv1="fixed"), 10, 3)  # plain Conv2d(groups=4) 1x1s, no gathers
    goal = 1.25 if batch > 1 else 1.1
    return Case(f"condensenet86_b{batch}", trained, (3, 32, 32), batch, _as_if_trained(twin),
                [(f"(b) best export / best dense ≥ {goal}", lambda r: (r.best("export") / r.best("dense"), goal))])


def resnet18_flgc(balanced: bool, size: int, batch: int) -> Case:
    trained = flgc_model("tv_resnet18", 4, ["layer*.conv*"], balanced, 3)
    twin = _grouped_twin(create_model("tv_resnet18", num_classes=10, in_channels=3), "layer", 4)
    goal = 0.9 if balanced else 0.75
    kind = "balanced" if balanced else "uneven"
    return Case(f"resnet18_flgc_{kind}_{size}_b{batch}", trained, (3, size, size), batch, _as_if_trained(twin),
                [(f"(c) export in the twin's best runtime / twin ≥ {goal}",
                  lambda r: (r.export_in_twins_best_runtime(), goal))])


def lenet5_ssl(batch: int) -> Case:
    """LeNet-5 with the structure SSL learned on Fashion-MNIST (docs/benchmarks.md): conv1 keeps
    7 of 20 filters, conv2 34 of 50 filters on those 7 channels; fc1 then reads 544 of 800."""
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        conv1, conv2 = model.features[0], model.features[3]
        conv1.weight[7:] = 0
        conv1.bias[7:] = 0
        conv2.weight[34:] = 0
        conv2.bias[34:] = 0
        conv2.weight[:, 7:] = 0
    return Case(f"lenet5_ssl_b{batch}", model, (1, 28, 28), batch,
                targets=[("(d) best export / best dense ≥ 2.0", lambda r: (r.best("export") / r.best("dense"), 2.0))])


def dead_channels(name: str, batch: int, frac: float = 0.5) -> Case:
    """Half of every conv's filters dead (weights and their BatchNorm's γ, β zero)."""
    torch.manual_seed(0)
    model = _as_if_trained(create_model(name, num_classes=10, in_channels=3))
    g = torch.Generator().manual_seed(0)
    modules = list(model.modules())
    with torch.no_grad():
        for conv, bn in zip(modules, modules[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                dead = torch.rand(conv.out_channels, generator=g) < frac
                conv.weight[dead] = 0
                bn.weight[dead] = 0
                bn.bias[dead] = 0
    return Case(f"{name}_dead{int(frac * 100)}_b{batch}", model, (3, 32, 32), batch)


CASES = {
    "condensenet86_b64": lambda: condensenet86(64),
    "condensenet86_b1": lambda: condensenet86(1),
    "resnet18_flgc_balanced_32_b64": lambda: resnet18_flgc(True, 32, 64),
    "resnet18_flgc_uneven_32_b64": lambda: resnet18_flgc(False, 32, 64),
    "resnet18_flgc_balanced_224_b8": lambda: resnet18_flgc(True, 224, 8),
    "resnet18_flgc_uneven_224_b8": lambda: resnet18_flgc(False, 224, 8),
    "lenet5_ssl_b256": lambda: lenet5_ssl(256),
    "resnet56_dead50_b64": lambda: dead_channels("resnet56", 64),
    "vgg16_bn_dead50_b64": lambda: dead_channels("vgg16_bn", 64),
}


@torch.no_grad()
def _as_if_trained(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _grouped_twin(model: nn.Module, prefix: str, groups: int) -> nn.Module:
    """The same network with every conv under `prefix*` a plain Conv2d(groups=G)."""
    for name, conv in list(model.named_modules()):
        if type(conv) is nn.Conv2d and name.startswith(prefix) and "downsample" not in name:
            model.set_submodule(name, nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                                conv.padding, groups=groups, bias=conv.bias is not None))
    return model


# --- the runtimes (learnsparse.export.runtimes) ----------------------------------------------

# The export is made for the runtime it runs in: `learnsparse-export target=...` times each
# learned layer's forms there (for AOTInductor, in torch.compile: the same Inductor code, built
# in seconds), then the assembled network in the target runtime itself.
TARGET_OF = {"eager": "eager", "eager_cl": "eager", "compile": "compile", "ort": "onnxruntime", "pt2": "pt2",
             "aoti": "aoti"}


@dataclass
class Result:
    ms: dict  # (network, runtime) → median ms

    def best(self, network: str) -> float:
        """Speed (1/ms) of the network in its fastest runtime."""
        times = [t for (n, _), t in self.ms.items() if n == network]
        return 1.0 / min(times) if times else float("nan")

    def best_runtime(self, network: str) -> str:
        return min(((t, r) for (n, r), t in self.ms.items() if n == network))[1]

    def export_in_twins_best_runtime(self) -> float:
        runtime = self.best_runtime("twin")
        return self.ms[("twin", runtime)] / self.ms[("export", runtime)]


def run_case(case: Case, runtimes, device: torch.device, threads: int, rounds: int, work: Path) -> Result:
    torch.manual_seed(0)
    x = torch.randn(case.batch, *case.input_shape, device=device)
    example = torch.randn(2, *case.input_shape)
    trained = case.trained.eval()
    exports = {}
    for target in sorted({TARGET_OF[r] for r in runtimes}):
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            result = condense_with_details(trained, example, target=target, batch=case.batch, threads=threads)
        exports[target] = result.model
        dense_layers = [n for n, t in result.tactics.items() if t["form"] == "dense"]
        print(f"  export for {target}: {len(result.tactics) - len(dense_layers)} learned layers sparse, "
              f"{len(dense_layers)} dense" + (f" ({', '.join(dense_layers[:6])}{' …' if len(dense_layers) > 6 else ''})"
                                               if dense_layers else ""), flush=True)
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
            model = exports[TARGET_OF[runtime]] if net == "export" else networks.get(net)
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
    checks += [(label, fn(result)) for label, fn in case.targets]
    for label, (value, goal) in checks:
        print(f"  {label}: {value:.2f} — {'met' if value >= goal else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible")
    print(f"# bench_deploy: torch {torch.__version__}, {args.threads} threads, device {device}, "
          f"{args.rounds} interleaved rounds, median")
    with tempfile.TemporaryDirectory() as work:
        for name in args.cases:
            case = CASES[name]()  # built and exported on the CPU; each runtime moves its copy to the device
            run_case(case, args.runtimes, device, args.threads, args.rounds, Path(work))
            # Compiled code of this case's networks goes: the next case's networks share
            # forward functions with them (same model class), and Dynamo counts its recompiles
            # per function.
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
