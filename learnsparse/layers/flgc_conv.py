"""FLGConv: fully learnable group convolution (Wang et al., CVPR 2019).

Both the input channels and the filters are assigned to G groups by learnable logits; filter
o reads input c only when both are in the same group. The forward pass uses the *hard*
assignment (one-hot of the argmax, or of a balanced assignment), so the network trained is
exactly the grouped network it exports to; the gradient reaches the logits through the
softmax (straight-through): one_hot + (softmax − softmax.detach()) equals the one-hot in value
and has the softmax's gradient.

    mask[o, c] = Σ_g  A_out[o, g] · A_in[c, g]          (1 if same group, else 0)
    y = conv(x, W ⊙ mask)

After `freeze()` the assignment is fixed (stored as group indices) and the logits stop
learning: the layer is then a fixed grouped conv that fine-tunes and exports.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.core.layer_types import GROUPING, register_layer_type

from .connectivity_conv import from_connectivity
from .deployed import conv_with
from .group_assignment import hard_assignment


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class FLGConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, groups: int = 4,
                 balanced: bool = False, temperature: float = 1.0, bias: bool = False,
                 assignment_grad_scale: float = 10.0):
        super().__init__()
        if groups < 1 or groups > min(in_channels, out_channels):
            raise ValueError(f"groups must be in [1, min(in, out)] = [1, {min(in_channels, out_channels)}], "
                             f"got {groups}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if assignment_grad_scale <= 0:
            raise ValueError(f"assignment_grad_scale must be > 0, got {assignment_grad_scale}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.balanced = balanced
        self.temperature = temperature
        # The logits' gradient, through a product of two one-hots and the weights, is small
        # next to the weights' own: at the weights' learning rate the assignments would barely
        # move in a realistic budget (docs/flgc.md). Scaling it is their learning rate multiplier.
        self.assignment_grad_scale = assignment_grad_scale
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.in_logits = nn.Parameter(torch.empty(in_channels, groups))
        self.out_logits = nn.Parameter(torch.empty(out_channels, groups))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("in_group", torch.zeros(in_channels, dtype=torch.long))
        self.register_buffer("out_group", torch.zeros(out_channels, dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Dense-conv fan-in init scaled up by √G: each filter reads about in/G inputs.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        with torch.no_grad():
            self.weight.mul_(math.sqrt(self.groups))
        # Start from the interleaved assignment (channel c in group c mod G), kept by a small
        # margin that training overturns where the loss asks, plus noise so that ties break
        # differently per channel.
        for logits in (self.in_logits, self.out_logits):
            n = logits.shape[0]
            with torch.no_grad():
                logits.normal_(0, 0.01)
                logits[torch.arange(n), torch.arange(n) % self.groups] += 0.05

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, groups: int, balanced: bool = False, temperature: float = 1.0) -> "FLGConv":
        """Same shape and weights as `conv` (which must be ungrouped), learning its grouping."""
        if conv.groups != 1 or conv.dilation != (1, 1) or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError("only ungrouped, undilated convolutions with zero padding can become FLGConv")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, groups,
                    balanced, temperature, bias=conv.bias is not None)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer.to(conv.weight.device)

    # ---- assignments -----------------------------------------------------------------------
    def assignments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input group [in], filter group [out]) as used by the forward pass right now."""
        if bool(self.frozen):
            return self.in_group, self.out_group
        return hard_assignment(self.in_logits, self.balanced), hard_assignment(self.out_logits, self.balanced)

    def _straight_through(self, logits: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(hard, self.groups).to(logits.dtype)
        soft = torch.softmax(logits / self.temperature, dim=1) * self.assignment_grad_scale
        # (soft − soft.detach()) is exactly 0, so the value is exactly the one-hot; written
        # one_hot + soft − soft.detach() it would round (1 + s − s ≠ 1 in floating point).
        return one_hot + (soft - soft.detach())

    def connection_mask(self) -> torch.Tensor:
        """[out, in]: exactly 0/1 in value; carries the assignments' gradient while learning."""
        in_group, out_group = self.assignments()
        if bool(self.frozen):
            return (out_group[:, None] == in_group[None, :]).to(self.weight.dtype)
        a_in = self._straight_through(self.in_logits, in_group)
        a_out = self._straight_through(self.out_logits, out_group)
        return a_out @ a_in.t()

    @torch.no_grad()
    def connectivity(self) -> torch.Tensor:
        """[out, in] bool: filter o reads input i (same group, current hard assignment)."""
        in_group, out_group = self.assignments()
        return out_group[:, None] == in_group[None, :]

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix the current hard assignment; the logits stop receiving gradient."""
        in_group, out_group = self.assignments()
        self.in_group.copy_(in_group)
        self.out_group.copy_(out_group)
        self.frozen.fill_(True)
        self.in_logits.requires_grad_(False)
        self.out_logits.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.connection_mask()[:, :, None, None].to(self.weight.dtype)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if bool(self.frozen):  # a frozen layer's logits stay frozen after a resume
            self.in_logits.requires_grad_(False)
            self.out_logits.requires_grad_(False)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, balanced={self.balanced}, "
                f"temperature={self.temperature}")


def convert_flgc(module: FLGConv) -> nn.Module:
    return from_connectivity(module.weight, module.bias, module.connectivity(), module.stride, module.padding)


def trainable_converter(module: FLGConv) -> nn.Module | None:
    """Per-group convs, or one grouped conv when the groups are equal: no padding weights,
    which training would move away from zero. None when a group has filters but no inputs
    (only padding computes those): the layer then keeps training masked."""
    in_group, out_group = module.assignments()
    in_sizes = torch.bincount(in_group, minlength=module.groups)
    out_sizes = torch.bincount(out_group, minlength=module.groups)
    if bool(((in_sizes == 0) & (out_sizes > 0)).any()):
        return None
    used = out_sizes > 0
    equal = bool((in_sizes[used] == in_sizes[used][0]).all() and (out_sizes[used] == out_sizes[used][0]).all())
    layout = "padded" if equal and bool(used.all()) and bool((in_sizes > 0).all()) else "split"
    return from_connectivity(module.weight, module.bias, module.connectivity(), module.stride, module.padding, layout)


def save_structure(m: FLGConv) -> dict[str, torch.Tensor]:
    in_group, out_group = m.assignments()
    return {"in_group": in_group.cpu().clone(), "out_group": out_group.cpu().clone()}


def restore_structure(m: FLGConv, structure: dict[str, torch.Tensor]) -> None:
    m.in_group.copy_(structure["in_group"])
    m.out_group.copy_(structure["out_group"])
    m.frozen.fill_(True)


def dense_form(m: FLGConv):
    weight = m.weight.detach() * m.connection_mask()[:, :, None, None].to(m.weight.dtype)
    return conv_with(weight, m.bias, m)


@torch.no_grad()
def finish(m: FLGConv, generator: torch.Generator | None = None) -> None:
    """The assignment frozen, as FLGC's schedule ends: the one learned so far, or a random one."""
    if generator is not None:
        m.in_logits.copy_(torch.randn(m.in_logits.shape, generator=generator))
        m.out_logits.copy_(torch.randn(m.out_logits.shape, generator=generator))
    m.freeze()


register_layer_type(FLGConv, converter=convert_flgc, save_structure=save_structure, restore_structure=restore_structure,
                    dense_form=dense_form, trainable_converter=trainable_converter, learns=GROUPING, finish=finish)
