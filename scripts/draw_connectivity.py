"""Draw each learned group conv's connectivity from a training checkpoint as PNG files.

    python scripts/draw_connectivity.py <checkpoint or glob> <output folder> [--layers 3]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from torchvision.utils import save_image

from learnsparse.engine.checkpoint_io import load_checkpoint
from learnsparse.export.from_checkpoint import model_from_checkpoint, resolve_checkpoint
from learnsparse.nn import LearnedGroupConv
from learnsparse.sparsity.connectivity import connectivity_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=None, help="draw only the first N layers")
    ap.add_argument("--cell", type=int, default=4, help="pixels per connection")
    args = ap.parse_args()
    path = resolve_checkpoint(args.checkpoint)  # a path, or a glob naming the newest match
    model, _, _ = model_from_checkpoint(load_checkpoint(path), path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LearnedGroupConv)][: args.layers]
    for name, layer in layers:
        file = out / f"connectivity_{name.replace('.', '_')}.png"
        save_image(connectivity_image(layer, cell=args.cell), file)
        print(file)


if __name__ == "__main__":
    main()
