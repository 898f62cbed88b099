"""Shape-wise structure: which convolutions are worth lowering to a GEMM over kept fibres.

Rule, from `scripts/bench_lowered_conv.py` (docs/export.md has the table): lowering pays only
when few fibres are left — below 10% of C·kh·kw it was 1.3–3.5× faster than the dense conv on
every LeNet-5 and ResNet-20 layer shape measured; at 10% it was even, and above it slower
(the gather of kept rows costs more than the multiply-adds it saves).
"""
from __future__ import annotations

import torch.nn as nn

from learnsparse.layers.lowered_conv import LoweredConv2d

LOWER_BELOW = 0.10


def lowerable(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str) and conv.kernel_size != (1, 1))


def kept_fibre_fraction(conv: nn.Conv2d) -> float:
    fibres = (conv.weight.detach() != 0).any(dim=0)
    return float(fibres.sum()) / fibres.numel()


def worth_lowering(conv: nn.Module) -> bool:
    return lowerable(conv) and kept_fibre_fraction(conv) < LOWER_BELOW


def lowered_fibres(model: nn.Module) -> dict[str, LoweredConv2d]:
    """The lowered replacement of every conv the rule picks, by name."""
    return {n: LoweredConv2d.from_conv(m) for n, m in model.named_modules() if worth_lowering(m)}
