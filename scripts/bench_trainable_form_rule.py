"""One CondenseNet training step after the in-training swap, under each `trainable_form` choice
that needs no timing, against the masked network: every layer deployed, and `rule` (deployed
only where the layer's input has at most RULE_MAX_PIXELS pixels). Interleaved in one process,
median of --rounds, channels-last (the masked network's faster format on a CPU).

    python scripts/bench_trainable_form_rule.py [--model condensenet86] [--batch 64] [--rounds 21]
"""
from __future__ import annotations

import argparse
import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from learnsparse.core.runtimes import interleaved_ms
from learnsparse.engine.surgery import replace_modules
from learnsparse.layers import LearnedGroupConv
from learnsparse.layers.end_state import at_end_state
from learnsparse.models import create_model
from learnsparse.sparsity.condense_in_training import choose_before_training, swap_in_training
from learnsparse.sparsity.trainable_forms import DEPLOYED, RULE


def _trainer(model, optimizer, batch: int):
    trainer = SimpleNamespace(unwrapped_model=model, model=model, optimizer=optimizer, device=torch.device("cpu"),
                              memory_format=torch.channels_last, input_shape=[3, 32, 32],
                              train_loader=SimpleNamespace(batch_size=batch))
    trainer.replace_modules = lambda mapping, **options: replace_modules(trainer, mapping, **options)
    return trainer


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="condensenet86")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    masked = at_end_state(create_model(args.model, num_classes=10, in_channels=3)).to(memory_format=torch.channels_last)
    variants = {"masked": masked}
    for choice in (DEPLOYED, RULE):
        model = copy.deepcopy(masked)
        trainer = _trainer(model, _sgd(model), args.batch)
        names = [n for n, m in model.named_modules() if isinstance(m, LearnedGroupConv)]
        forms = choose_before_training(trainer, names, lambda m: None, choice)  # at its last stage already
        swapped = swap_in_training(trainer, names, "lgc", forms=forms)
        variants[f"swapped, {choice}"] = model
        print(f"{choice}: {len(swapped)} of {len(names)} learned layers train deployed")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), generator=g)

    def runner(model):
        model.train()
        opt = _sgd(model)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():  # the timer runs under no_grad
                F.cross_entropy(model(x), y).backward()
            opt.step()
        return step

    ms = interleaved_ms({k: runner(m) for k, m in variants.items()}, rounds=args.rounds)
    print(f"# {args.model}, batch {args.batch}, channels-last, {args.threads} threads, {args.rounds} interleaved "
          f"rounds, median ms per training step (forward, backward, SGD)")
    print("| network | params | ms | masked / it |")
    print("| --- | ---: | ---: | ---: |")
    for label, model in variants.items():
        print(f"| {label} | {sum(p.numel() for p in model.parameters()):,} | {ms[label]:.1f} | "
              f"{ms['masked'] / ms[label]:.2f}x |")


if __name__ == "__main__":
    main()
