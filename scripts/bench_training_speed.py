"""Training speed after condensing in place: one training step (forward, backward, SGD with
momentum) of the masked network against the same network after the in-training swap, timed in
one process, interleaved, median of --rounds rounds, at --threads threads.

    python scripts/bench_training_speed.py                      # the three networks below
    python scripts/bench_training_speed.py --wall --epochs 4     # + whole condensenet_mini runs
    python scripts/bench_training_speed.py --compile             # + each masked and swapped network compiled
    python scripts/bench_training_speed.py --compile --device cuda --amp bf16 --formats cl   # on a GPU

Cases (structure at its end state: random weights, then the structure the method reaches):
- tv_resnet18, FLGC G = 4 balanced on layer*.conv*, 32x32, batch 64; with the fixed-group twin
  (plain Conv2d(groups=4), no gathers) as the limit and the dense network for reference;
- ResNet-56 with half the channels inside its blocks removed by threshold-and-freeze (the 50%
  weakest filters of every block's first conv), batch 64; for reference, the ResNet-56 built at
  half width everywhere (residual stream included): no removal of half the channels trains
  faster than it;
- CondenseNet-86 (CIFAR, every learned group conv at its last stage), batch 64; with its
  fixed-group twin (the same network with plain Conv2d(groups=4) 1x1 convs, no gathers).
Each network runs in NCHW and in channels-last; the faster of the two is quoted (a user picks
it with trainer.channels_last). `--wall` also trains condensenet_mini on Fashion-MNIST with
and without the swap and reports wall time and checkpoint sizes.

`--compile` adds, for the masked network and each swapped one, the same training step with
the forward compiled (torch.compile, as `trainer.compile=true`; backward through AOTAutograd),
timed in the same interleaved rounds as the eager steps; the compile time (the first step,
less a steady one) is reported apart and never enters the medians.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from learnsparse import sparsify
from learnsparse.core.runtimes import interleaved_ms
from learnsparse.engine.surgery import replace_modules
from learnsparse.layers import FLGConv, LearnedGroupConv
from learnsparse.layers.end_state import at_end_state
from learnsparse.models import create_model
from learnsparse.models.condensenet import CondenseNet
from learnsparse.models.resnet_cifar import CifarResNet
from learnsparse.sparsity.condense_in_training import choose_before_training, swap_in_training
from learnsparse.sparsity.threshold_freeze import ThresholdFreeze


def _trainer(model, optimizer, shape, batch: int = 64, memory_format=torch.contiguous_format):
    """What the swap and the shrink need of a Trainer (its one surgery path included)."""
    trainer = SimpleNamespace(unwrapped_model=model, model=model, optimizer=optimizer, device=torch.device("cpu"),
                              memory_format=memory_format, input_shape=list(shape), progress=0.5,
                              train_loader=SimpleNamespace(batch_size=batch))
    trainer.replace_modules = lambda mapping, **options: replace_modules(trainer, mapping, **options)
    return trainer


def _sgd(model):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                           weight_decay=5e-4)


def flgc_case(batch: int):
    shape = (3, 32, 32)
    torch.manual_seed(0)
    masked = create_model("tv_resnet18", num_classes=10, in_channels=3)
    sparsify(masked, "flgc", groups=4, include=["layer*.conv*"], balanced=True)
    masked = at_end_state(masked)
    swapped = copy.deepcopy(masked)
    opt = _sgd(swapped)
    swap_in_training(_trainer(swapped, opt, shape), [n for n, m in swapped.named_modules() if isinstance(m, FLGConv)],
                     "flgc")
    twin = create_model("tv_resnet18", num_classes=10, in_channels=3)
    for name, m in list(twin.named_modules()):
        if name.startswith("layer") and isinstance(m, nn.Conv2d) and ".conv" in name:
            twin.set_submodule(name, nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                               groups=4, bias=False))
    dense = create_model("tv_resnet18", num_classes=10, in_channels=3)
    return shape, {"masked": (masked, None), "swapped": (swapped, None), "twin": (twin, None),
                   "dense": (dense, None)}


def threshold_case(batch: int):
    shape = (3, 32, 32)
    torch.manual_seed(0)
    base = at_end_state(create_model("resnet56", num_classes=10, in_channels=3))
    variants = {}
    for label, shrink in (("masked", False), ("swapped", True)):
        model = copy.deepcopy(base)
        hook = ThresholdFreeze(model, at=0.0, tau=0.5, rule="percentile", include=["layer*.conv1"],
                               shrink_in_training=shrink)
        hook.trainer = _trainer(model, _sgd(model), shape)
        hook.freeze()
        variants[label] = (model, hook)
    variants["dense"] = (copy.deepcopy(base), None)
    variants["half width everywhere"] = (CifarResNet(56, 10, 3, widths=(8, 16, 32)), None)
    return shape, variants


def condensenet_case(batch: int):
    shape = (3, 32, 32)
    torch.manual_seed(0)
    masked = at_end_state(create_model("condensenet86", num_classes=10, in_channels=3))
    variants = {"masked": (masked, None)}
    # Every layer deployed; and only those whose forward + backward measured faster deployed, in
    # channels-last (the masked network's faster format), as `trainable_form=measure` does.
    for label, choose in (("swapped", "deployed"), ("swapped, measured forms", "measure")):
        fmt = torch.channels_last if choose == "measure" else torch.contiguous_format
        model = copy.deepcopy(masked).to(memory_format=fmt)  # as the trainer holds it
        trainer = _trainer(model, _sgd(model), shape, batch, fmt)
        names = [n for n, m in model.named_modules() if isinstance(m, LearnedGroupConv)]
        forms = choose_before_training(trainer, names, lambda m: None, choose)  # at its last stage already
        swap_in_training(trainer, names, "lgc", forms=forms)
        variants[label] = (model.to(memory_format=torch.contiguous_format), None)
    fixed = dataclasses.replace(masked.spec, conv1="fixed")
    variants["twin"] = (CondenseNet(fixed, num_classes=10, in_channels=3), None)
    return shape, variants


CASES = {"resnet18_flgc_balanced_32_b64": flgc_case, "resnet56_threshold_half_b64": threshold_case,
         "condensenet86_b64": condensenet_case}
# Reference networks, each quoted as masked / it: the fixed-structure limits, and dense.
REFERENCES = {"twin": "the fixed-group twin (the limit)",
              "half width everywhere": "built at half width everywhere (beyond any half-channel removal)",
              "dense": "dense"}
SPEED_GOALS = {"resnet18_flgc_balanced_32_b64": 1.4, "resnet56_threshold_half_b64": 1.8, "condensenet86_b64": 1.15}


def step_runner(model, hook, x, y, channels_last: bool, compiled: bool = False, amp=None):
    model = model.to(device=x.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    opt = _sgd(model)
    forward = torch.compile(model) if compiled else model  # as trainer.compile=true wraps it

    def autocast():
        return torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None)
    if hook is not None:  # the masked threshold network pays its masking points, as in the trainer
        hook.model = model
        hook.trainer = _trainer(model, opt, x.shape[1:])
        hook._pairs = None  # its cached (parameter, mask) pairs were the original model's
        hook._move_masks()  # onto the model's device
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad(), autocast():  # the timer runs under no_grad
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        if hook is not None:
            hook.after_backward()
        opt.step()
        if hook is not None:
            hook.after_step()
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compile_seconds(runner, device: torch.device) -> float:
    """The first call of a compiled step less a steady one: Dynamo, AOTAutograd and the
    backend's code generation, forward and backward."""
    _sync(device)
    t0 = time.perf_counter()
    runner()
    _sync(device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner()
    _sync(device)
    return first - (time.perf_counter() - t0)


def run_case(name: str, batch: int, rounds: int, formats=(False, True), compiled: bool = False,
             device: torch.device = torch.device("cpu"), amp=None) -> dict:
    shape, variants = CASES[name](batch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    runners, compile_s = {}, {}
    for label, (model, hook) in variants.items():
        for cl in formats:  # each network in each format; the faster is quoted
            runners[(label, cl)] = step_runner(copy.deepcopy(model), copy.deepcopy(hook), x, y, cl, amp=amp)
            if compiled and (label == "masked" or label.startswith("swapped")):
                # Each network compiles from nothing, as a run's start does (those compiled
                # before compile again in interleaved_ms's warm-up calls, which are not timed).
                torch._dynamo.reset()
                run = step_runner(copy.deepcopy(model), copy.deepcopy(hook), x, y, cl, compiled=True, amp=amp)
                compile_s[(f"{label}, compiled", cl)] = compile_seconds(run, device)
                runners[(f"{label}, compiled", cl)] = run
    ms = interleaved_ms(runners, rounds=rounds)
    labels = list(dict.fromkeys(label for label, _ in runners))
    best = {label: min(ms[(label, cl)] for cl in formats) for label in labels}
    params = {label: sum(p.numel() for p in m.parameters()) for label, (m, _) in variants.items()}
    cols = {False: "NCHW ms", True: "channels-last ms"}
    print(f"## {name}: batch {batch}, {rounds} interleaved rounds, median ms per training step on {device}"
          + (f", {amp} autocast" if amp is not None else ""))
    print(f"| network | params | {' | '.join(cols[cl] for cl in formats)} | best ms |"
          + (" compile s |" if compiled else ""))
    print("| --- | ---: |" + " ---: |" * (len(formats) + 1 + bool(compiled)))
    for label in labels:
        base = label.removesuffix(", compiled")
        row = f"| {label} | {params[base]:,} | " + " | ".join(f"{ms[(label, cl)]:.1f}" for cl in formats)
        row += f" | {best[label]:.1f} |"
        if compiled:
            row += (" " + " / ".join(f"{compile_s[(label, cl)]:.0f}" for cl in formats) + " |"
                    if (label, formats[0]) in compile_s else " |")
        print(row)
    if compiled:
        line = "compiled / eager, best format:"
        for label in labels:
            if label.endswith(", compiled"):
                line += f" {label.removesuffix(', compiled')} {best[label.removesuffix(', compiled')] / best[label]:.2f}x;"
        print(line.rstrip(";"))
    swapped = min((label for label in variants if label.startswith("swapped")), key=best.get)  # eager
    speedup = best["masked"] / best[swapped]
    line = (f"after the swap ({swapped}) / masked: {speedup:.2f}x "
            f"(target ≥ {SPEED_GOALS[name]}: {'met' if speedup >= SPEED_GOALS[name] else 'NOT met'})")
    for label, what in REFERENCES.items():
        if label in best:
            line += f"; {what}: {best['masked'] / best[label]:.2f}x"
    print(line, flush=True)
    return {"ms": {f"{k[0]}{'_cl' if k[1] else ''}": v for k, v in ms.items()}, "speedup": speedup}


def wall_runs(epochs: int, subset: int, threads: int) -> None:
    from learnsparse import train
    from learnsparse.core.config_dir import compose

    print(f"## condensenet_mini on Fashion-MNIST, {epochs} epochs on {subset} images, {threads} threads")
    print("| run | wall s | test top-1 % | last.pt bytes |")
    print("| --- | ---: | ---: | ---: |")
    for label, flag, form in (("masked to the end", "false", "deployed"), ("condensed in training", "true", "deployed"),
                              ("condensed in training, measured forms", "true", "measure")):
        with tempfile.TemporaryDirectory() as out:
            cfg = compose(["experiment=quickstart", f"trainer.epochs={epochs}", f"data.dataset.train_subset={subset}",
                           f"sparsity.condensenet.condense_in_training={flag}",
                           f"sparsity.condensenet.trainable_form={form}", "logger=none", f"paths.output_dir={out}"])
            t0 = time.perf_counter()
            metrics = train(cfg)
            wall = time.perf_counter() - t0
            size = (Path(out) / "checkpoints" / "last.pt").stat().st_size
            print(f"| {label} | {wall:.0f} | {metrics['val_top1']:.2f} | {size:,} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wall", action="store_true", help="also time whole condensenet_mini runs with and without")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-subset", type=int, default=30000)
    ap.add_argument("--json", type=Path, default=None, help="write the measured figures here")
    ap.add_argument("--compile", action="store_true", help="also time the masked and swapped networks compiled")
    ap.add_argument("--formats", nargs="+", choices=("nchw", "cl"), default=["nchw", "cl"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="autocast the forward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    formats = tuple(f == "cl" for f in args.formats)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    print(f"# bench_training_speed: torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.rounds} interleaved rounds, median")
    results = {name: run_case(name, args.batch, args.rounds, formats, args.compile, device, amp) for name in args.cases}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.wall:
        wall_runs(args.epochs, args.train_subset, args.threads)


if __name__ == "__main__":
    main()
