"""Place structured zeros in a model the way training leaves them: dead filters (with their
BatchNorm affine killed, as the freeze step does), unread input channels, zero shape fibres,
whole residual branches — and, as the BatchNorm trap, zero filters whose BatchNorm keeps a
non-zero constant (which the export must keep)."""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.models.residual_blocks import RESIDUAL_BLOCKS, residual_blocks


def _following_bn(model: nn.Module) -> dict[nn.Module, nn.BatchNorm2d]:
    """conv → the BatchNorm registered right after it in the same parent (true for every model here)."""
    pairs = {}
    for parent in model.modules():
        children = list(parent.children())
        for a, b in zip(children, children[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.num_features == a.out_channels:
                pairs[a] = b
        for name, m in parent.named_children():
            if isinstance(m, nn.Conv2d) and name.startswith("conv"):
                bn = getattr(parent, "bn" + name[4:], None)
                if isinstance(bn, nn.BatchNorm2d) and bn.num_features == m.out_channels:
                    pairs[m] = bn
    return pairs


@torch.no_grad()
def place_structured_zeros(model: nn.Module, seed: int, frac: float = 0.25, branches: float = 0.3) -> nn.Module:
    g = torch.Generator().manual_seed(seed)

    def pick(n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=g) < p

    bns = _following_bn(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-0.5, 0.5, generator=g)
    for m in list(model.modules()):
        if isinstance(m, nn.Conv2d):
            w = m.weight
            dead = pick(w.shape[0], frac)
            w[dead] = 0
            if m in bns:
                trap = pick(w.shape[0], 0.5) & dead  # half keep their BN constant: must survive
                killed = dead & ~trap
                bns[m].weight[killed] = 0
                bns[m].bias[killed] = 0
            if m.groups == 1:
                w[:, pick(w.shape[1], frac / 2)] = 0
                if w.shape[-1] > 1:
                    fibres = pick(w.shape[1] * w.shape[2] * w.shape[3], frac).view(w.shape[1:])
                    w[:, fibres] = 0
        elif isinstance(m, nn.Linear):
            m.weight[:, pick(m.weight.shape[1], frac)] = 0
    for _, block in residual_blocks(model):
        if bool(pick(1, branches)):
            kind = RESIDUAL_BLOCKS[type(block)]
            kind.last_conv(block).weight.zero_()
            kind.last_bn(block).weight.zero_()
            kind.last_bn(block).bias.zero_()
    return model.eval()


def with_shape_sparse_conv(model: nn.Module, kept: float, seed: int) -> nn.Module:
    """Leave only `kept` of each ungrouped k×k conv's fibres (so the export lowers them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size != (1, 1):
                m.weight.mul_(torch.rand(m.weight.shape[1:], generator=g) < kept)
    return model.eval()
