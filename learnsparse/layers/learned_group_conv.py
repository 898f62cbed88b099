"""CondenseNet's learned group convolution (Huang et al., CVPR 2018).

Filter `o` belongs to group `o mod groups`. Training starts dense; each of the
`condense_factor - 1` condensing stages drops `in_channels // condense_factor` more input
channels from every group — those on which the group's weights have the smallest L1 norm.
After the last stage each group reads `in_channels - (C-1)·(in_channels // C)` inputs, so it
exports to an index-select of the kept inputs, a `Conv2d(groups=G)` and a channel shuffle.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.core.layer_types import CONDENSING, register_layer_type

from .deployed import IndexSelectGroupConv, conv_with


class LearnedGroupConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 4, condense_factor: int = 4, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        if groups < 1 or out_channels % groups:
            raise ValueError(f"LearnedGroupConv: out_channels={out_channels} must be a multiple of groups={groups}")
        if condense_factor < 1 or in_channels < condense_factor:
            raise ValueError(f"LearnedGroupConv: in_channels={in_channels} must be ≥ condense_factor={condense_factor} "
                             f"(each stage drops in_channels // condense_factor inputs per group)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups, self.condense_factor = groups, condense_factor
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # mask[g, c] = 1 when group g reads input c. A buffer, updated in place, so it is in the
        # state dict, moves with .to(), and DDP broadcasts it from rank 0 with the others.
        self.register_buffer("mask", torch.ones(groups, in_channels))
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))

    @property
    def max_stage(self) -> int:
        return self.condense_factor - 1

    @property
    def drop_per_stage(self) -> int:
        return self.in_channels // self.condense_factor

    def kept_per_group(self, stage: int | None = None) -> int:
        stage = int(self.stage) if stage is None else stage
        return self.in_channels - stage * self.drop_per_stage

    def filter_mask(self) -> torch.Tensor:
        """[out, in]: row o is the mask of filter o's group, o mod groups."""
        return self.mask.repeat(self.out_channels // self.groups, 1)

    def connectivity(self) -> torch.Tensor:
        """[out, in] bool: filter o reads input i (its group's current mask)."""
        return self.filter_mask().bool()

    def masked_weight(self) -> torch.Tensor:
        return self.conv.weight * self.filter_mask()[:, :, None, None].to(self.conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        return F.conv2d(x, self.masked_weight(), self.conv.bias, self.conv.stride, self.conv.padding)

    def group_norms(self, p: int = 1) -> torch.Tensor:
        """[groups, in]: the L_p norm of group g's (masked) weights on input c, over its filters and kernel."""
        w = self.masked_weight().detach() if p == 1 else self.masked_weight()
        w = w.reshape(self.out_channels // self.groups, self.groups, self.in_channels, -1)
        if p == 1:
            return w.abs().sum(dim=(0, 3))
        return w.pow(2).sum(dim=(0, 3)).clamp_min(1e-12).sqrt()

    def group_lasso(self) -> torch.Tensor:
        """Σ over groups and inputs of the L2 norm of that group's column (CondenseNet's term)."""
        return (self.group_norms(p=2) * self.mask).sum()

    @torch.no_grad()
    def condense_to(self, stage: int) -> int:
        """Apply every stage from the current one up to `stage`; returns how many were applied.

        Each stage ranks, per group, the inputs still kept by the L1 norm of the group's
        weights on them, and drops the `in_channels // condense_factor` smallest."""
        if not 0 <= stage <= self.max_stage:
            raise ValueError(f"stage must be in [0, {self.max_stage}], got {stage}")
        applied = 0
        while int(self.stage) < stage:
            norms = self.group_norms(p=1)
            # Dropped inputs rank last so they are never chosen again.
            norms = torch.where(self.mask.bool(), norms, torch.full_like(norms, float("inf")))
            drop = norms.argsort(dim=1, stable=True)[:, : self.drop_per_stage]
            self.mask.scatter_(1, drop, 0.0)
            self.stage += 1
            applied += 1
        return applied

    def kept_index(self) -> torch.Tensor:
        """[groups, kept]: the inputs each group reads, ascending."""
        kept = self.kept_per_group()
        return self.mask.bool().nonzero()[:, 1].reshape(self.groups, kept)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.conv.kernel_size}, groups={self.groups}, "
                f"condense_factor={self.condense_factor}, stage={int(self.stage)}")


def save_structure(m: LearnedGroupConv) -> dict[str, torch.Tensor]:
    return {"mask": m.mask.detach().cpu().clone(), "stage": m.stage.detach().cpu().clone()}


def restore_structure(m: LearnedGroupConv, structure: dict[str, torch.Tensor]) -> None:
    m.mask.copy_(structure["mask"])
    m.stage.copy_(structure["stage"])


def dense_form(m: LearnedGroupConv):
    return conv_with(m.masked_weight().detach(), m.conv.bias, m.conv)


register_layer_type(LearnedGroupConv, converter=IndexSelectGroupConv.from_trained, save_structure=save_structure,
                    restore_structure=restore_structure, dense_form=dense_form,
                    trainable_converter=IndexSelectGroupConv.from_trained, learns=CONDENSING,
                    finish=lambda m, generator=None: m.condense_to(m.max_stage))
