"""Weight groups as reductions: a group kind names the dimensions a group spans.

For a conv weight W[n, c, i, j]:

    filter    W[n, :, :, :]   one group per output channel
    channel   W[:, c, :, :]   one group per input channel
    shape     W[:, c, i, j]   one group per kernel fibre (input channel × kernel position)
    kernel2d  W[n, c, :, :]   one group per 2-D kernel
    layer     W               the whole layer
    element   W[n, c, i, j]   every weight alone (L1)

The norms of all groups of one tensor are one `vector_norm` over the group's dimensions
(`keepdim`, so they broadcast back onto the weight): no Python loop over groups anywhere.
A linear weight W[n, c] has filter, channel, layer and element groups; its shape and
kernel2d groups are its elements.
"""
from __future__ import annotations

import torch

KINDS = ("filter", "channel", "shape", "kernel2d", "layer", "element")


def group_dims(kind: str, ndim: int) -> tuple[int, ...]:
    """Dimensions reduced to get one norm per group; () means each element is its own group."""
    if kind not in KINDS:
        raise ValueError(f"unknown group kind {kind!r}; choose from {list(KINDS)}")
    if ndim < 2:
        return ()
    if kind == "filter":
        return tuple(range(1, ndim))
    if kind == "channel":
        return (0, *range(2, ndim))
    if kind == "shape":
        return (0,) if ndim > 2 else ()
    if kind == "kernel2d":
        return tuple(range(2, ndim))
    if kind == "layer":
        return tuple(range(ndim))
    return ()


def group_norms(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """L2 norm of every group, shaped to broadcast against `weight`."""
    dims = group_dims(kind, weight.dim())
    if not dims:
        return weight.abs()
    return torch.linalg.vector_norm(weight, dim=dims, keepdim=True)

