"""learnsparse against Torch-Pruning at equal MACs, from one dense starting checkpoint
(issue 24, item 6): for each model and MACs budget, every row fine-tunes the same dense
network for the same epochs with the same optimizer and data, and is measured the same way.

    python scripts/compare_pruners.py --out runs/pruners --model vgg resnet20 --budgets 0.5 0.3 \
        --seeds 0 1 2 --epochs 10 [--dense-epochs 10] [--train-subset 60000] [--rows ...] [--kd]

Rows (`--rows`, default all; `--kd` adds each learnsparse and Torch-Pruning row again with
knowledge distillation from the dense network):
  learnsparse SSL filter/channel + threshold, budget.macs     (learnsparse.train, then condense)
  learnsparse slimming + threshold, budget.macs
  Torch-Pruning L1 (MagnitudePruner), Taylor, BNScalePruner, GroupNormPruner
                                      (plain PyTorch; the ratio that meets the MACs found by bisection)
  narrowed dense, from scratch        (every width scaled to the budget; dense + fine-tune epochs)

Every row cuts at progress `--cut-at` (learnsparse's threshold.at) in `--steps` equal steps
(budget.steps; Torch-Pruning's iterative_steps), widths a multiple of `--round-to`; the
regularizing rows (SSL, slimming, BNScale, GroupNorm) regularize until the cut. Counted on the
network that would be deployed: learnsparse's export (`condense`), Torch-Pruning's pruned
model. Latency: every network beside the dense one, in eager PyTorch (BatchNorm folded into
the convs for every network, as the export does) and ONNX Runtime, one process, interleaved,
median of `--rounds` rounds at `--threads` threads and batch `--batch`.

Writes <out>/results.json, results.csv, table.md and <out>/<model>_tradeoff.png (through
plot_tradeoff.py). Runs are kept under <out>/<model>/...; a finished run is read back.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import statistics
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

import learnsparse
import plot_tradeoff
import pruner_baselines as pb
from learnsparse.core.config_dir import compose
from learnsparse.core.runtimes import interleaved_ms, runner
from learnsparse.engine.run import build_data
from learnsparse.export import condense, load_trained

LS_ROWS = {
    "learnsparse SSL filter/channel + threshold": [
        "sparsity=[ssl_filter_channel,threshold]", "sparsity.threshold.kinds=[filter,channel]",
        "sparsity.ssl_filter_channel.until={at}"],
    "learnsparse slimming + threshold": [
        "sparsity=[bn_slimming,threshold]", "sparsity.threshold.layers=batchnorm", "sparsity.bn_slimming.until={at}"],
}
TP_ROWS = {
    "Torch-Pruning L1 (MagnitudePruner)": "l1",
    "Torch-Pruning Taylor": "taylor",
    "Torch-Pruning BNScalePruner": "bnscale",
    "Torch-Pruning GroupNormPruner": "groupnorm",
}
SCRATCH = "narrowed dense, from scratch"
DENSE = "dense (start)"

log = logging.getLogger("compare_pruners")


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def compose_run(args, model_node: dict, out: Path, seed: int, epochs: int, lr: float, extra: list[str]):
    """The config of one learnsparse run: the shared data, optimizer and schedule, this row's extras."""
    subset = "null" if args.train_subset is None else args.train_subset
    cfg = compose([f"seed={seed}", f"trainer.epochs={epochs}", f"optim.lr={lr}", f"data.dataset.train_subset={subset}",
                   "logger=none", "trainer.device=cpu", f"paths.output_dir={out}", "trainer.resume=auto", *extra])
    with open_dict(cfg):
        cfg.model = OmegaConf.create(model_node)
    return cfg


def finished(path: Path, key: dict) -> dict | None:
    if path.is_file():
        result = json.loads(path.read_text())
        if result.get("key") == key:
            return result
    return None


def dense_run(args, model: str) -> tuple[Path, dict]:
    """The dense starting checkpoint (trained once per model with learnsparse.train) and its facts."""
    out = args.out / model / "dense"
    key = {"epochs": args.dense_epochs, "train_subset": args.train_subset, "lr": args.dense_lr}
    result = finished(out / "result.json", key)
    if result is None:
        cfg = compose_run(args, pb.model_node(model), out, 0, args.dense_epochs, args.dense_lr, [])
        top1 = learnsparse.train(cfg)["val_top1"]
        trained = load_trained(out / "checkpoints" / "last.pt")
        result = {"key": key, "label": DENSE, "seed": 0, "top1": top1,
                  **pb.size(trained, torch.zeros(1, *trained.input_shape))}
        torch.save(trained, out / "network.pt")
        (out / "result.json").write_text(json.dumps(result))
    return out / "checkpoints" / "last.pt", result


def learnsparse_row(args, model: str, dense_ckpt: Path, budget: float, label: str, extra: list[str], kd: bool,
                    seed: int, out: Path) -> dict:
    overrides = [f"trainer.init_from={dense_ckpt}", f"budget.macs={budget}", f"budget.steps={args.steps}",
                 f"sparsity.threshold.at={args.cut_at}", *[e.format(at=args.cut_at) for e in extra]]
    if args.round_to:
        overrides.append(f"budget.round_to={args.round_to}")
    if kd:
        overrides.append("distill=kd")
    cfg = compose_run(args, pb.model_node(model), out, seed, args.epochs, args.lr, overrides)
    top1 = learnsparse.train(cfg)["val_top1"]
    trained = load_trained(out / "checkpoints" / "last.pt")
    example = torch.randn(8, *trained.input_shape)
    deployed = condense(trained, example)  # verified equal to the trained network
    torch.save(deployed, out / "network.pt")
    return {"top1": top1, **pb.size(deployed, example)}


def fine_tune_recipe(args, kd: bool) -> pb.FineTune:
    """learnsparse's fine-tuning recipe, read from the same composed config its rows run under."""
    cfg = compose([f"optim.lr={args.lr}", *(["distill=kd"] if kd else [])])
    return pb.FineTune(epochs=args.epochs, lr=args.lr, momentum=float(cfg.optim.momentum),
                       weight_decay=float(cfg.optim.weight_decay), nesterov=bool(cfg.optim.nesterov),
                       batch_size=int(cfg.data.batch_size), at=args.cut_at, steps=args.steps,
                       kd_temperature=float(cfg.distill.temperature) if kd else None,
                       kd_alpha=float(cfg.distill.alpha) if kd else 0.9)


def torch_pruning_row(args, model: str, dense_ckpt: Path, budget: float, method: str, kd: bool, seed: int,
                      out: Path) -> dict:
    dense = load_trained(dense_ckpt)
    reg = {"bnscale": args.slim_strength, "groupnorm": args.groupnorm_strength}.get(method, 0.0)
    pruned, top1 = pb.tp_finetune(dense, pb.TP_METHODS[method], fine_tune_recipe(args, kd), data_bundle(args), seed,
                                  budget, args.round_to, reg, log=log.info)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(pruned.eval(), out / "network.pt")
    return {"top1": top1, **pb.size(pruned, torch.zeros(1, *dense.input_shape))}


def scratch_row(args, model: str, dense_macs: int, budget: float, seed: int, out: Path) -> dict:
    example = torch.zeros(1, 1, 28, 28)
    widths = pb.narrowed_widths(model, budget * dense_macs, args.round_to, example)
    # From scratch for as long as the pruned rows trained in all: the dense run plus their fine-tune.
    cfg = compose_run(args, pb.model_node(model, widths), out, seed, args.dense_epochs + args.epochs,
                      args.dense_lr, [])
    top1 = learnsparse.train(cfg)["val_top1"]
    trained = load_trained(out / "checkpoints" / "last.pt")
    torch.save(trained, out / "network.pt")
    return {"top1": top1, "widths": widths, **pb.size(trained, example)}


_BUNDLE = {}


def data_bundle(args):
    """The same data learnsparse's rows train on (its fashion_mnist config, transforms and subset)."""
    if "bundle" not in _BUNDLE:
        subset = "null" if args.train_subset is None else args.train_subset
        _BUNDLE["bundle"] = build_data(compose([f"data.dataset.train_subset={subset}"]))
    return _BUNDLE["bundle"]


def rows_for(args) -> list[tuple[str, str, object, bool]]:
    """(label, kind, what, kd) for every row asked for, in table order."""
    rows = []
    for kd in ([False, True] if args.kd else [False]):
        tag = " + KD" if kd else ""
        rows += [(label + tag, "ls", extra, kd) for label, extra in LS_ROWS.items()]
        rows += [(label + tag, "tp", method, kd) for label, method in TP_ROWS.items()]
    rows.append((SCRATCH, "scratch", None, False))
    if args.rows:
        rows = [r for r in rows if any(s.lower() in r[0].lower() for s in args.rows)]
    return rows


def run_model(args, model: str) -> list[dict]:
    dense_ckpt, dense = dense_run(args, model)
    log.info("%s dense: top-1 %.2f, %s MACs, %s params", model, dense["top1"], f"{dense['macs']:,}",
             f"{dense['params']:,}")
    results = [{**dense, "model": model, "budget": 1.0, "run": str(dense_ckpt.parent.parent)}]
    for budget in args.budgets:
        for label, kind, what, kd in rows_for(args):
            for seed in args.seeds:
                out = args.out / model / f"macs{budget:g}" / slug(label) / f"seed{seed}"
                key = {"epochs": args.epochs, "dense_epochs": args.dense_epochs, "train_subset": args.train_subset,
                       "lr": args.lr, "at": args.cut_at, "steps": args.steps, "round_to": args.round_to}
                result = finished(out / "result.json", key)
                if result is None:
                    log.info("== %s, macs %g, %s, seed %d", model, budget, label, seed)
                    if kind == "ls":
                        facts = learnsparse_row(args, model, dense_ckpt, budget, label, what, kd, seed, out)
                    elif kind == "tp":
                        facts = torch_pruning_row(args, model, dense_ckpt, budget, what, kd, seed, out)
                    else:
                        facts = scratch_row(args, model, dense["macs"], budget, seed, out)
                    result = {"key": key, "label": label, "seed": seed, **facts}
                    (out / "result.json").write_text(json.dumps(result))
                log.info("%s, macs %g, %s, seed %d: top-1 %.2f at %.4f of the dense MACs", model, budget, label, seed,
                         result["top1"], result["macs"] / dense["macs"])
                results.append({**result, "model": model, "budget": budget, "run": str(out)})
    return results


def fold_batchnorm(network: torch.nn.Module) -> torch.nn.Module:
    """`network` with each conv → BatchNorm pair folded into one conv (torch.fx's eval-mode fuse)."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(network)
    except Exception as e:  # a network torch.fx cannot trace is timed as it is, and the log says so
        log.warning("could not fold BatchNorm in %s (%s); timed as it is", type(network).__name__, e)
        return network


def measure_latency(args, model: str, results: list[dict]) -> None:
    """Every network of `model` beside its dense start, eager and ONNX Runtime, interleaved in one process."""
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 1, 28, 28)
    runners = {}
    with tempfile.TemporaryDirectory() as work, torch.no_grad():
        for r in results:
            network = torch.load(Path(r["run"]) / "network.pt", weights_only=False).eval()
            # Every network at its best in eager: BatchNorm folded into the conv before it, as
            # learnsparse's export does (ONNX Runtime folds it itself).
            runners[(r["run"], "eager")] = runner(fold_batchnorm(network), "eager", x, args.threads, Path(work))
            runners[(r["run"], "ort")] = runner(network, "ort", x, args.threads, Path(work))
        ms = interleaved_ms(runners, rounds=args.rounds, warmup=3)
    dense_run_dir = next(r["run"] for r in results if r["label"] == DENSE)
    for r in results:
        for rt in ("eager", "ort"):
            r[f"{rt}_ms"] = ms[(r["run"], rt)]
            r[f"{rt}_speedup"] = ms[(dense_run_dir, rt)] / ms[(r["run"], rt)]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown(results: list[dict], args) -> str:
    lines = []
    for model in args.model:
        dense = next(r for r in results if r["model"] == model and r["label"] == DENSE)
        lines += [f"\n### {model}: dense {dense['macs']:,} MACs/image, {dense['params']:,} params, "
                  f"top-1 {dense['top1']:.2f}% (eager {dense['eager_ms']:.2f} ms, ONNX Runtime {dense['ort_ms']:.2f} ms "
                  f"at batch {args.batch})\n",
                  "| budget | row | MACs / dense | params | test top-1 % | eager × dense | ORT × dense | seeds |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for budget in args.budgets:
            for label, *_ in rows_for(args):
                runs = [r for r in results if r["model"] == model and r["budget"] == budget and r["label"] == label]
                if not runs:
                    continue
                cells = []
                for key, fmt in (("macs", "{:.3f}"), ("params", "{:,.0f}"), ("top1", "{:.2f}"),
                                 ("eager_speedup", "{:.2f}"), ("ort_speedup", "{:.2f}")):
                    vals = [r[key] / dense["macs"] if key == "macs" else r[key] for r in runs]
                    m, s = mean_std(vals)
                    cells.append(fmt.format(m) + (f" ± {fmt.format(s)}" if len(vals) > 1 and key != "params" else ""))
                lines.append(f"| {budget:g} | {label} | " + " | ".join(cells) + f" | {len(runs)} |")
    return "\n".join(lines)


def write_outputs(args, results: list[dict]) -> None:
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    columns = ["model", "budget", "label", "seed", "top1", "macs", "params", "eager_ms", "ort_ms", "eager_speedup",
               "ort_speedup", "run"]
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    table = markdown(results, args)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    for model in args.model:
        points = {}
        for r in results:
            if r["model"] == model:
                name = r["label"] if r["label"] == DENSE else f"{r['label']} @{r['budget']:g}"
                # plot_tradeoff's second panel reads "ms": the ONNX Runtime latency at --batch
                points.setdefault(name, []).append({**r, "ms": r["ort_ms"]})
        png = args.out / f"{model}_tradeoff.png"
        plot_tradeoff.plot(plot_tradeoff.summary(points), png)
        print(f"wrote {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="runs are kept here; finished ones are read back")
    ap.add_argument("--model", nargs="+", default=["vgg", "resnet20"], choices=["vgg", "resnet20"])
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3], help="fractions of the dense MACs")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10, help="fine-tune epochs, the same for every row")
    ap.add_argument("--dense-epochs", type=int, default=10, help="epochs of the dense starting run")
    ap.add_argument("--train-subset", type=int, default=None, help="first N training images (default: all 60,000)")
    ap.add_argument("--lr", type=float, default=0.02, help="fine-tune learning rate (cosine, per iteration)")
    ap.add_argument("--dense-lr", type=float, default=0.1, help="learning rate from scratch (dense, narrowed)")
    ap.add_argument("--cut-at", type=float, default=0.5, help="progress of the (last) cut, for every row")
    ap.add_argument("--steps", type=int, default=1, help="pruning increments (budget.steps, iterative_steps)")
    ap.add_argument("--round-to", type=int, default=8, help="thinned widths a multiple of this (0: none)")
    ap.add_argument("--slim-strength", type=float, default=1e-4,
                    help="λ of BNScalePruner; learnsparse's bn_slimming keeps its shipped strength (1e-4)")
    ap.add_argument("--groupnorm-strength", type=float, default=1e-4, help="reg of GroupNormPruner (its default)")
    ap.add_argument("--kd", action="store_true", help="also every pruning row with distillation from the dense net")
    ap.add_argument("--rows", nargs="+", help="only rows whose label contains one of these (case-insensitive)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="latency batch")
    ap.add_argument("--rounds", type=int, default=25, help="interleaved latency rounds (median)")
    args = ap.parse_args()
    args.round_to = args.round_to or None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for model in args.model:
        model_results = run_model(args, model)
        measure_latency(args, model, model_results)
        results += model_results
    write_outputs(args, results)


if __name__ == "__main__":
    main()
