"""How close can any export of a learned grouping come to the fixed-group twin? The floor:
the twin plus only the channel reorders the learned structure cannot do without.

A grouped conv needs its input channels, and produces its output channels, in group order.
With a fixed grouping that order is the natural one everywhere, and the twin (plain
`Conv2d(groups=G)`) needs no reorder at all. A learned grouping assigns channels freely, so
wherever two layers see one tensor under different groupings, one of them reads it
reordered. Reorders that meet only per-channel ops (BatchNorm, ReLU) fold into a neighbour's
weights, and the export folds them; the ones counted below cannot be folded:

- ResNet-18 + FLGC (balanced, random assignments): every block's conv1 output grouping differs
  from its conv2 input grouping (one reorder between them), and the residual stream of a stage
  is read by each block's conv1 and written by each block's conv2 under as many groupings. The
  stream can be carried in one order per stage, which satisfies one of them; every other one
  costs a reorder (the downsampling shortcut's 1x1 conv writes in any order for free). That is
  8 inside the blocks and 12 on the streams: 20. The export has 24.
- CondenseNet-86: each layer reads the concatenated features with a learned selection per
  group of its 1x1 conv (a gather over all its input channels), and the 3x3 group conv reads
  the 1x1's groups interleaved (the shuffle of CondenseNet: its partition cuts across every
  1x1 group, so no channel order suits both). Two reorders per layer, 84 in all; the export
  has 84.

The floor network is the twin with exactly these reorders inserted, as random channel
permutations (the export's own channel gather, a Gather in ONNX: the cheapest reorder ONNX
Runtime runs). It runs beside the dense network, the twin and the export, all four in ONNX
Runtime (the twin's fastest runtime in every case of `bench_deploy.py`), interleaved in one
process:

    python scripts/bench_structure_floor.py                 # every case, 2 threads, 21 rounds
    python scripts/bench_structure_floor.py --cases resnet18_flgc_balanced_32_b64 --rounds 31
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from bench_cases import CASES as DEPLOY_CASES  # the same models and twins as bench_deploy.py

from learnsparse.core.runtimes import interleaved_ms, runner
from learnsparse.export import condense_with_details, dense_equivalent
from learnsparse.layers.channel_ops import select_channels
from learnsparse.layers.dense_block import DenseLayer


class Reorder(nn.Module):
    """A fixed random channel permutation: one gather, as the export's own."""

    def __init__(self, channels: int, seed: int):
        super().__init__()
        self.register_buffer("index", torch.randperm(channels, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return select_channels(x, self.index)


def resnet18_floor(twin: nn.Module) -> tuple[nn.Module, int]:
    """Reorders at the positions listed in the module docstring: before conv2 in every block;
    before conv1 in every block but the first (whose stream order is chosen for it); after
    conv2 where the block's shortcut is the identity and the stage's order was not chosen
    for it (the first block of stages 2-4 writes through the downsampling conv, free)."""
    count = 0
    for s in range(1, 5):
        for b, block in enumerate(getattr(twin, f"layer{s}")):
            reads_first = s == 1 and b == 0
            writes_free = b == 0 and s > 1  # the stage's stream order is this block's
            if not reads_first:
                block.conv1 = nn.Sequential(Reorder(block.conv1.in_channels, count), block.conv1)
                count += 1
            block.conv2 = nn.Sequential(Reorder(block.conv2.in_channels, count), block.conv2)
            count += 1
            if not writes_free:
                # after the BatchNorm, which then still folds into the conv
                block.bn2 = nn.Sequential(block.bn2, Reorder(block.bn2.num_features, count))
                count += 1
    return twin, count


def condensenet_floor(twin: nn.Module) -> tuple[nn.Module, int]:
    """Per layer: the learned input selection before the 1x1 group conv, and the shuffle
    between it and the 3x3 group conv."""
    count = 0
    for layer in [m for m in twin.modules() if isinstance(m, DenseLayer)]:
        layer.conv1 = nn.Sequential(Reorder(layer.conv1.in_channels, count), layer.conv1)
        # the shuffle after the 1x1's BatchNorm and ReLU, which then still fold and fuse into it
        layer.conv2 = nn.Sequential(Reorder(layer.conv2.in_channels, count + 1), layer.conv2)
        count += 2
    return twin, count


FLOORS = {"condensenet86_b64": condensenet_floor, "condensenet86_b1": condensenet_floor,
          "resnet18_flgc_balanced_32_b64": resnet18_floor, "resnet18_flgc_balanced_224_b8": resnet18_floor}


def gathers(model: nn.Module, x: torch.Tensor, work: Path) -> int:
    import onnx

    from learnsparse.export.artifacts import save_onnx
    path = work / "count.onnx"
    save_onnx(model.eval(), x[:1], path)
    return sum(n.op_type == "Gather" for n in onnx.load(str(path)).graph.node)


def run(name: str, threads: int, rounds: int, work: Path) -> None:
    case = DEPLOY_CASES[name]()
    floor, inserted = FLOORS[name](copy.deepcopy(case.twin))
    example = torch.randn(2, *case.input_shape)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        export = condense_with_details(case.trained.eval(), example, target="onnxruntime", batch=case.batch,
                                       threads=threads, measure=True).model
    x = torch.randn(case.batch, *case.input_shape)
    networks = {"dense": dense_equivalent(case.trained.eval()), "twin": case.twin.eval(), "floor": floor.eval(),
                "export": export}
    counts = {k: gathers(m, x, work) for k, m in networks.items()}
    ms = interleaved_ms({k: runner(m, "ort", x, threads, work) for k, m in networks.items()}, rounds=rounds)
    print(f"## {name}: ONNX Runtime, batch {case.batch}, {rounds} interleaved rounds, median")
    print("| network | Gather nodes | ms | it / dense | it / twin |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k in networks:  # speed ratios: how many times faster than dense, as a fraction of the twin
        print(f"| {k} | {counts[k]} | {ms[k]:.2f} | {ms['dense'] / ms[k]:.2f}x | {ms['twin'] / ms[k]:.2f}x |")
    print(f"floor: the twin + the {inserted} reorders the learned structure needs; "
          f"export / floor = {ms['floor'] / ms['export']:.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=list(FLOORS), default=list(FLOORS))
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# bench_structure_floor: torch {torch.__version__}, {args.threads} threads, ONNX Runtime CPU")
    with tempfile.TemporaryDirectory() as work:
        for name in args.cases:
            run(name, args.threads, args.rounds, Path(work))


if __name__ == "__main__":
    main()
