"""Exported model vs the masked (trained) model it came from: throughput, side by side.

Models are timed in turn every round (interleaved), median of --rounds rounds, on the same
random NCHW inputs, `torch.set_num_threads(--threads)`. The export is timed as it comes out
(channels-last weights) and with `channels_last=False`. Also timed: the masked model in
channels-last layout (the best a user could do without exporting) and, for CondenseNets, the
straightforward conversion (index-select → grouped conv → shuffle per layer, DenseNet's
torch.cat kept), which is what the reference CondenseNet converter builds.

    python scripts/bench_export.py [--model condensenet86] [--batches 64 1] [--rounds 21]

With --flgc-groups G, any registry model gets FLGC layers (`learnsparse.sparsify`, random
frozen assignments, --balanced for equal groups) on the convs matching --flgc-include, and
the export is compared with that masked model, e.g. ResNet-18 at 32x32 and at 224x224:

    python scripts/bench_export.py --model tv_resnet18 --flgc-groups 4 --size 32 --batches 64
    python scripts/bench_export.py --model tv_resnet18 --flgc-groups 4 --size 224 --batches 8
"""
from __future__ import annotations

import argparse
import copy

import torch
from bench_cases import INPUT, flgc_model, trained_model

from learnsparse.core.counting import count_params, macs_by_module
from learnsparse.core.runtimes import interleaved_latency
from learnsparse.export import condense
from learnsparse.export.registry import convert_modules
from learnsparse.layers import LearnedGroupConv
from learnsparse.layers.dense_block import DenseBlock
from learnsparse.layers.flgc_conv import FLGConv


def straightforward_conversion(model: torch.nn.Module) -> torch.nn.Module:
    """Per-layer conversion only (no dense-block rewrite): the reference's structure."""
    plain = copy.deepcopy(model)
    # Inside each block, every learned conv converts on its own (the block's converter, which
    # rewrites the block as a whole, is not called: the walk starts below the block).
    for block in [m for m in plain.modules() if isinstance(m, DenseBlock)]:
        convert_modules(block)
    return plain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="condensenet86")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 1])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flgc-groups", type=int, default=0, help="benchmark FLGC with this many groups instead")
    ap.add_argument("--flgc-include", nargs="+", default=["layer*.conv*"])
    ap.add_argument("--balanced", action="store_true")
    ap.add_argument("--size", type=int, default=None, help="input height and width (default: the model's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    channels, size = INPUT.get(args.model, (3, 32))
    size = args.size or size
    example = torch.randn(2, channels, size, size)
    if args.flgc_groups:
        trained = flgc_model(args.model, args.flgc_groups, args.flgc_include, args.balanced, channels)
    else:
        trained = trained_model(args.model)
    exported = condense(trained, example)
    variants = {
        "masked (trained)": trained,
        "masked, channels_last": copy.deepcopy(trained).to(memory_format=torch.channels_last),
        "learnsparse export": exported,
        "export, channels_last=False": condense(trained, example, channels_last=False),
    }
    if not args.flgc_groups:
        variants["per-layer conversion"] = straightforward_conversion(trained)
    one = example[:1]
    macs_before, macs_after = macs_by_module(trained, one)[""], macs_by_module(exported, one)[""]
    macs_kept = kept_connection_macs(trained, one)
    print(f"{args.model}{f' + FLGC G={args.flgc_groups}' if args.flgc_groups else ''} at {size}x{size}: "
          f"params {count_params(trained):,} → {count_params(exported):,}; MACs/image {macs_before:,} → "
          f"{macs_after:,} computed by the export ({macs_before / macs_after:.2f}x fewer), "
          f"{macs_kept:,} on kept connections ({macs_before / macs_kept:.2f}x fewer)")
    print(f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds, median, NCHW inputs")
    for batch in args.batches:
        x = torch.randn(batch, channels, size, size)
        lat = interleaved_latency(variants, x, rounds=args.rounds)
        base = lat["masked (trained)"]
        print(f"\nbatch {batch}")
        print(f"{'model':<30}{'ms':>10}{'images/s':>12}{'vs masked':>12}")
        for k, t in lat.items():
            print(f"{k:<30}{t * 1e3:>10.2f}{batch / t:>12.1f}{base / t:>11.2f}x")
        speedup = base / lat["learnsparse export"]
        print(f"export speedup / MAC reduction = {speedup / (macs_before / macs_after):.2f} (computed MACs), "
              f"{speedup / (macs_before / macs_kept):.2f} (kept connections)")


def kept_connection_macs(trained: torch.nn.Module, example: torch.Tensor) -> int:
    """The trained model's MACs counting only connections its masks keep: the work any export
    must do at least (padding groups to equal sizes adds to it)."""
    per_module = macs_by_module(trained, example)
    total = per_module[""]
    for name, m in trained.named_modules():
        if isinstance(m, FLGConv):
            mask = m.connection_mask()
        elif isinstance(m, LearnedGroupConv):
            mask = m.mask
        else:
            continue
        density = float((mask != 0).float().mean())
        total -= round(per_module.get(name, 0) * (1 - density))
    return total


if __name__ == "__main__":
    main()
