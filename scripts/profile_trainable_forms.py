"""Per layer of CondenseNet-86 at its last stage: forward + backward of each learned group conv
masked and in its deployed form, on its real input (batch 64, channels-last by default), as
`trainable_form=measure` times them at the in-training swap.

    python scripts/profile_trainable_forms.py [--batch 64] [--nchw] [--every 3]

Prints one row per layer (input shape, ms per form, which form the swap would keep) and the
sums: how much of a training step the 1x1 learned layers are, and what swapping can save.
"""
from __future__ import annotations

import argparse

import torch

from learnsparse.export.tactics import layer_inputs
from learnsparse.layers import LearnedGroupConv
from learnsparse.layers.end_state import at_end_state
from learnsparse.models import create_model
from learnsparse.sparsity.condense_in_training import trainable_deployed
from learnsparse.sparsity.trainable_forms import DEPLOYED, MASKED, faster_form, training_step_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--nchw", action="store_true", help="NCHW instead of channels-last")
    ap.add_argument("--every", type=int, default=1, help="time every n-th layer only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fmt = torch.contiguous_format if args.nchw else torch.channels_last
    torch.manual_seed(0)
    model = at_end_state(create_model("condensenet86", num_classes=10, in_channels=3)).to(memory_format=fmt)
    names = [n for n, m in model.named_modules() if isinstance(m, LearnedGroupConv)][::args.every]
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=fmt)
    inputs = layer_inputs(model.eval(), names, x)
    print(f"# CondenseNet-86 learned group convs, batch {args.batch}, {'NCHW' if args.nchw else 'channels-last'}, "
          f"{args.threads} threads, median of {args.rounds}, ms of forward + backward")
    print("| layer | input | masked ms | deployed ms | kept |")
    print("| --- | --- | ---: | ---: | --- |")
    total = {MASKED: 0.0, DEPLOYED: 0.0, "best": 0.0}
    for name in names:
        layer = model.get_submodule(name)
        deployed = trainable_deployed(layer).to(memory_format=fmt)
        ms = training_step_ms({MASKED: layer, DEPLOYED: deployed}, inputs[name], rounds=args.rounds)
        kept = faster_form(ms)
        total[MASKED] += ms[MASKED]
        total[DEPLOYED] += ms[DEPLOYED]
        total["best"] += ms[kept]
        shape = "×".join(str(d) for d in inputs[name].shape[1:])
        print(f"| {name} | {shape} | {ms[MASKED]:.2f} | {ms[DEPLOYED]:.2f} | {kept} |", flush=True)
    print(f"| sum ({len(names)} layers) | | {total[MASKED]:.1f} | {total[DEPLOYED]:.1f} | {total['best']:.1f} (each layer's kept form) |")


if __name__ == "__main__":
    main()
