"""Proof that an exported model computes what the trained one does."""
from __future__ import annotations

import torch
import torch.nn as nn

from learnsparse.core.errors import UserError


class ExportMismatchError(UserError):
    """The exported model's outputs differ from the trained model's beyond tolerance."""


@torch.no_grad()
def max_difference(trained: nn.Module, exported: nn.Module, inputs: list[torch.Tensor]) -> tuple[float, float]:
    """(max |trained − exported|, max |trained|) over all inputs, both models in eval mode."""
    diff, scale = 0.0, 0.0
    for x in inputs:
        a, b = trained(x).float(), exported(x).float()
        if a.shape != b.shape:
            raise ExportMismatchError(f"exported output shape {tuple(b.shape)} != trained {tuple(a.shape)}")
        diff = max(diff, (a - b).abs().max().item())
        scale = max(scale, a.abs().max().item())
    return diff, scale


def verification_inputs(example: torch.Tensor, n_random: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """The example plus random inputs of its shape at several scales, drawn reproducibly."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    extra = [torch.randn(example.shape, generator=g).mul(s).to(example.device, example.dtype)
             for s in (1.0, 3.0)[:n_random]]
    return [example, *extra]


def check_equivalent(trained: nn.Module, exported: nn.Module, inputs: list[torch.Tensor],
                     rtol: float = 1e-5) -> tuple[float, float]:
    diff, scale = max_difference(trained, exported, inputs)
    if not diff <= rtol * max(scale, 1e-12):
        raise ExportMismatchError(
            f"exported model differs from the trained one: max |Δ| = {diff:.3g} on outputs of scale {scale:.3g} "
            f"(allowed {rtol:g} × scale); nothing was written")
    return diff, scale
