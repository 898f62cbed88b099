"""Place structured zeros in a model the way training leaves them: dead filters (with their
BatchNorm affine killed, as the freeze step does), unread input channels, zero shape fibres,
whole residual branches — and, as the BatchNorm trap, zero filters whose BatchNorm keeps a
non-zero constant (which the export must keep)."""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.layers.residual_blocks import RESIDUAL_BLOCKS, residual_blocks


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


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, nn.Module]:
    """conv → the BatchNorm that reads its output and nothing else in between, found by running
    the model (any model: the pairing comes from the tensors, not from attribute names)."""
    made: dict[int, nn.Module] = {}
    pairs: dict[nn.Module, nn.Module] = {}

    def after_conv(m, args, out):
        made[id(out)] = (m, out)

    def before_bn(m, args):
        hit = made.get(id(args[0]))
        if hit is not None and hit[1] is args[0] and hit[0].out_channels == m.num_features:
            pairs[hit[0]] = m

    handles = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(before_bn) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return pairs


def _hidden_linears(model: nn.Module) -> list[nn.Linear]:
    """Linear layers whose output another layer reads (every linear but the last: the logits)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[:-1]


@torch.no_grad()
def kill_filters(model: nn.Module, example: torch.Tensor, seed: int = 0, frac: float = 0.3) -> nn.Module:
    """Dead channels as SSL plus threshold-and-freeze leave them, on any model: `frac` of every
    ungrouped conv's filters zeroed together with the BatchNorm that follows (γ = β = 0), and
    `frac` of every hidden linear layer's units (rows and bias). Running statistics are set to
    non-trivial values first, so a channel that is not dead is not silently constant."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.affine and m.track_running_stats:
            m.running_mean.uniform_(-1, 1, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-0.5, 0.5, generator=g)
    pairs = _conv_bn_pairs(model, example)
    for m in list(model.modules()):
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels > 1:
            dead = torch.rand(m.out_channels, generator=g) < frac
            m.weight[dead] = 0
            if m.bias is not None:
                m.bias[dead] = 0
            bn = pairs.get(m)
            if bn is not None and bn.affine:
                bn.weight[dead], bn.bias[dead] = 0, 0
    for m in _hidden_linears(model):
        dead = torch.rand(m.out_features, generator=g) < frac
        m.weight[dead] = 0
        if m.bias is not None:
            m.bias[dead] = 0
    return model.eval()
