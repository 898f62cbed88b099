"""SSL's Tables 1–2 for LeNet-5 on Fashion-MNIST: error, filters and channels kept per layer,
FLOPs per layer, and measured CPU speedup per layer and for the whole exported model.

Reads the dense run's and the SSL runs' checkpoints, exports each SSL model (verified equal to
its trained form), and times layers and models at batch 256, side by side (interleaved, median
of --rounds, --threads threads).

    python scripts/ssl_lenet5_table.py --dense <dense run>/checkpoints/last.pt \\
        --ssl <ssl run>/checkpoints/last.pt [--ssl <ssl shape run>/checkpoints/last.pt]
"""
from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import torch
import torch.nn as nn

from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.core.counting import macs_by_module
from learnsparse.core.runtimes import interleaved_latency
from learnsparse.export import condense_with_details
from learnsparse.export.from_checkpoint import model_from_checkpoint


def test_error(ckpt: dict) -> float:
    return 100.0 - float(ckpt["history"][-1]["val_top1"])


def layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen, handles = {}, []
    modules = dict(model.named_modules())
    for n in names:
        handles.append(modules[n].register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0].clone())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def kept(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return f"{module.out_channels} filters, {module.in_channels} channels"
    if isinstance(module, nn.Linear):
        return f"{module.out_features} outputs, {module.in_features} inputs"
    w = getattr(module, "weight", None)
    return f"{w.shape[0]} filters, {w.shape[1]} fibres (lowered)" if w is not None else type(module).__name__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", required=True)
    ap.add_argument("--ssl", action="append", required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dense_ckpt = load_checkpoint(args.dense)
    dense, _, shape = model_from_checkpoint(dense_ckpt, Path(args.dense))
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
    layers = [n for n, m in dense.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    convs = [n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)]
    dense_macs = macs_by_module(dense, x[:1])
    print(f"dense LeNet-5: test error {test_error(dense_ckpt):.2f}%, {dense_macs['']:,} MACs per image")
    for path in args.ssl:
        ckpt = load_checkpoint(path)
        trained, _, _ = model_from_checkpoint(ckpt, Path(path))
        result = condense_with_details(trained, x[:8])
        exported = result.model
        macs = macs_by_module(exported, x[:1])
        conv_before = sum(dense_macs[n] for n in convs)
        conv_after = sum(macs.get(n, 0) for n in convs)
        ins_dense, ins_exp = layer_inputs(dense, layers, x), layer_inputs(exported, layers, x)
        d_mods, e_mods = dict(dense.named_modules()), dict(exported.named_modules())
        print(f"\n{Path(path).parent.parent.name} ({ckpt['config'].get('task_name')}): test error "
              f"{test_error(ckpt):.2f}% (dense {test_error(dense_ckpt):.2f}%); max |trained − exported| "
              f"{result.max_abs_diff:.2g}; conv MACs {conv_after:,} of {conv_before:,} "
              f"({100 * (1 - conv_after / conv_before):.1f}% removed)")
        print(f"| layer | dense | kept | MACs % of dense | speedup at batch {args.batch} |")
        print("| --- | --- | --- | ---: | ---: |")
        for n in layers:
            times = _interleaved_pairs({"dense": (d_mods[n], ins_dense[n]), "exported": (e_mods[n], ins_exp[n])},
                                       args.rounds)
            print(f"| {n} | {kept(d_mods[n])} | {kept(e_mods[n])} | {100 * macs.get(n, 0) / dense_macs[n]:.1f}% | "
                  f"{times['dense'] / times['exported']:.2f}× |")
        whole = interleaved_latency({"dense": dense, "exported": exported}, x, rounds=args.rounds)
        print(f"| whole model | {dense_macs['']:,} MACs | {macs['']:,} MACs | {100 * macs[''] / dense_macs['']:.1f}% | "
              f"{whole['dense'] / whole['exported']:.2f}× ({whole['dense'] * 1e3:.2f} → {whole['exported'] * 1e3:.2f} ms) |")


def _interleaved_pairs(pairs: dict, rounds: int) -> dict[str, float]:
    """Like `interleaved_latency`, but each module gets its own input (the layer's real input
    in its own network)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # CUDA_HOME notice on CPU hosts
    from torch.utils.benchmark import Timer

    times = {k: [] for k in pairs}
    with torch.no_grad():
        for _ in range(rounds):
            for k, (mod, inp) in pairs.items():
                times[k].append(Timer("m(x)", globals={"m": mod, "x": inp},
                                      num_threads=torch.get_num_threads()).timeit(5).mean)
    return {k: statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    main()
