"""When does a lowered convolution (GEMM over only the kept kernel fibres) beat the dense
conv it replaces? Times both on layer shapes from LeNet-5 and ResNet-20, for several fractions
of kept fibres; the export's rule (`learnsparse.export.structure.lowering.LOWER_BELOW`) comes
from this table.

    python scripts/bench_lowered_conv.py [--rounds 21] [--threads 2]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from learnsparse.core.runtimes import interleaved_latency
from learnsparse.layers.lowered_conv import LoweredConv2d

# (name, in, out, kernel, padding, input size, batch)
SHAPES = [
    ("lenet5 conv1", 1, 20, 5, 0, 28, 256),
    ("lenet5 conv2", 20, 50, 5, 0, 12, 256),
    ("resnet20 16→16", 16, 16, 3, 1, 32, 128),
    ("resnet20 32→32", 32, 32, 3, 1, 16, 128),
    ("resnet20 64→64", 64, 64, 3, 1, 8, 128),
]
FRACTIONS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7]


def shape_sparse_conv(cin: int, cout: int, k: int, pad: int, kept: float) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=pad).eval()
    with torch.no_grad():
        fibres = torch.rand(cin, k, k) < kept
        conv.weight.mul_(fibres)
    return conv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads {args.threads}, median of {args.rounds} interleaved rounds; cells: dense ms / lowered ms")
    print("| layer | batch | " + " | ".join(f"kept {f:.0%}" for f in FRACTIONS) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in FRACTIONS) + " |")
    with torch.inference_mode():
        for name, cin, cout, k, pad, size, batch in SHAPES:
            x = torch.randn(batch, cin, size, size)
            cells = []
            for f in FRACTIONS:
                conv = shape_sparse_conv(cin, cout, k, pad, f)
                lowered = LoweredConv2d.from_conv(conv)
                assert torch.allclose(conv(x), lowered(x), atol=1e-4)
                t = interleaved_latency({"dense": conv, "lowered": lowered}, x, rounds=args.rounds)
                cells.append(f"{t['dense'] * 1e3:.2f} / {t['lowered'] * 1e3:.2f}")
            print(f"| {name} | {batch} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
