"""Draw connection matrices as PNG files: each sparse layer of a trained checkpoint or of a
registry model, or the gallery of structured sparse convolutions.

    python scripts/draw_connectivity.py <checkpoint or glob> <output folder> [--layers 3]
    python scripts/draw_connectivity.py --model lenet5_1998 <output folder>
    python scripts/draw_connectivity.py --gallery <output folder>
"""
from __future__ import annotations

import argparse
from pathlib import Path

from torchvision.utils import save_image

from learnsparse.layers import connectivity as C
from learnsparse.sparsity.connectivity_images import connectivity_image, fixed_sparse_layers

# One of each kind, 16 outputs × 16 inputs where the kind allows.
GALLERY = {
    "groups_4": lambda: C.groups(4, 16, 16),
    "depthwise": lambda: C.depthwise(16, 16),
    "uneven_seesaw": lambda: C.uneven([2, 6, 8], [4, 4, 8]),
    "shuffled_4": lambda: C.shuffled(4, 16, 16),
    "interleaved_l4_m4": lambda: C.interleaved(4, 4),
    "lenet5_c3": C.lenet5_c3,
    "random_0.25": lambda: C.random(0.25, 16, 16),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", help="a training checkpoint, or a glob naming the newest match")
    ap.add_argument("out")
    ap.add_argument("--model", help="draw a registry model's sparse layers (as built) instead of a checkpoint's")
    ap.add_argument("--gallery", action="store_true", help="draw one matrix of each kind of structured sparse conv")
    ap.add_argument("--layers", type=int, default=None, help="draw only the first N layers")
    ap.add_argument("--cell", type=int, default=4, help="pixels per connection")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.gallery:
        pictures = [(name, build()) for name, build in GALLERY.items()]
    else:
        if args.model:
            from learnsparse.models import create_model
            model = create_model(args.model)
        elif args.checkpoint:
            from learnsparse.core.checkpoint_io import load_checkpoint
            from learnsparse.export.from_checkpoint import model_from_checkpoint, resolve_checkpoint
            path = resolve_checkpoint(args.checkpoint)
            model, _, _ = model_from_checkpoint(load_checkpoint(path), path)
        else:
            ap.error("give a checkpoint, --model NAME or --gallery")
        pictures = fixed_sparse_layers(model)[: args.layers]
    for name, layer_or_matrix in pictures:
        file = out / f"connectivity_{name.replace('.', '_')}.png"
        save_image(connectivity_image(layer_or_matrix, cell=args.cell), file)
        print(file)


if __name__ == "__main__":
    main()
