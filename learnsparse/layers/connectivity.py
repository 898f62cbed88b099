"""Structured sparse convolutions as data: a connection matrix C[out, in] (True where output
channel o reads input channel i through some kernel) says which channels a conv connects.

Every structured sparse conv is such a matrix: uniform groups (AlexNet, ResNeXt), depthwise
(MobileNet), uneven groups (SeesawNet), shuffled groups (ShuffleNet), interleaved groups
(IGCV1), LeNet-5's partial S2→C3 table (LeCun et al. 1998), random connections, and the
learned ones (CondenseNet's masks, FLGC's assignments, SSL's dead filters and channels).

A constructor that knows its size returns the matrix; one that does not (`groups(4)`) returns
a `Pattern`, which `ConnectivityConv` (or a call `pattern(out_channels, in_channels)`) sizes.

`blocks(C)` finds the connected components of the bipartite graph of C — the groups an
exporter can turn into grouped or per-group convs — and `connectivity_of(module)` reads the
current matrix of any conv-like layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

Matrix = torch.Tensor  # bool [out, in]


@dataclass(frozen=True)
class Pattern:
    """A connection pattern not yet sized: call it with (out_channels, in_channels)."""
    name: str
    build: Callable[[int, int], Matrix]

    def __call__(self, out_channels: int, in_channels: int) -> Matrix:
        return self.build(out_channels, in_channels)

    def __repr__(self) -> str:
        return f"connectivity.{self.name}"


def _sized(name: str, build: Callable[[int, int], Matrix], out_channels: int | None,
           in_channels: int | None) -> Matrix | Pattern:
    if out_channels is not None and in_channels is not None:
        return build(out_channels, in_channels)
    return Pattern(name, build)


def resolve(connectivity: Matrix | Pattern, out_channels: int, in_channels: int) -> Matrix:
    """The [out, in] bool matrix of a matrix or pattern; one line when its size is wrong."""
    matrix = connectivity(out_channels, in_channels) if isinstance(connectivity, Pattern) else connectivity
    matrix = torch.as_tensor(matrix).bool()
    if tuple(matrix.shape) != (out_channels, in_channels):
        raise ValueError(f"connectivity must be [out_channels, in_channels] = [{out_channels}, {in_channels}], "
                         f"got {list(matrix.shape)}")
    return matrix


def from_groups(out_group: torch.Tensor, in_group: torch.Tensor) -> Matrix:
    """Output o reads input i when both are in the same group."""
    return out_group[:, None] == in_group[None, :]


def _split(total: int, parts: int, what: str) -> torch.Tensor:
    if parts < 1 or total % parts:
        raise ValueError(f"{what}: {total} channels do not split into {parts} equal groups")
    return torch.arange(total) // (total // parts)


def groups(g: int, out_channels: int | None = None, in_channels: int | None = None) -> Matrix | Pattern:
    """Uniform groups, as `Conv2d(groups=g)`: block diagonal with g equal blocks."""
    return _sized(f"groups({g})", lambda o, i: from_groups(_split(o, g, "groups"), _split(i, g, "groups")),
                  out_channels, in_channels)


def depthwise(out_channels: int | None = None, in_channels: int | None = None) -> Matrix | Pattern:
    """One group per input channel (MobileNet); each input feeds out/in outputs."""
    return _sized("depthwise()", lambda o, i: from_groups(_split(o, i, "depthwise"), torch.arange(i)),
                  out_channels, in_channels)


def uneven(sizes_in: list[int], sizes_out: list[int]) -> Matrix:
    """Groups of different sizes (SeesawNet): group k reads sizes_in[k] inputs and has
    sizes_out[k] outputs, in channel order."""
    if len(sizes_in) != len(sizes_out) or min(list(sizes_in) + list(sizes_out), default=0) < 1:
        raise ValueError(f"uneven: need as many positive input as output sizes, got {sizes_in} and {sizes_out}")
    in_group = torch.repeat_interleave(torch.arange(len(sizes_in)), torch.tensor(sizes_in))
    out_group = torch.repeat_interleave(torch.arange(len(sizes_out)), torch.tensor(sizes_out))
    return from_groups(out_group, in_group)


def shuffle_order(channels: int, g: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle with g groups: position k·g + j holds channel j·(C/g) + k."""
    return torch.arange(channels).reshape(g, channels // g).t().reshape(-1)


def shuffled(g: int, out_channels: int | None = None, in_channels: int | None = None) -> Matrix | Pattern:
    """A `Conv2d(groups=g)` followed by a channel shuffle (ShuffleNet): output position p is
    filter shuffle_order(out, g)[p] of the grouped conv."""
    return _sized(f"shuffled({g})", lambda o, i: groups(g, o, i)[shuffle_order(o, g)], out_channels, in_channels)


def interleaved(primary_groups: int, secondary_groups: int, channels: int | None = None,
                in_channels: int | None = None) -> Matrix:
    """The connections of one IGC block (IGCV1) as a whole: a grouped conv with L primary
    partitions, the interleaving permutation, a grouped 1x1 conv with M secondary partitions
    and the permutation back — the support of the product of the two sparse matrices.
    `channels` (outputs) defaults to L·M, `in_channels` to `channels`. With L·M channels it is
    complete — every output reads every input, through exactly one path: the block connects
    like a dense conv, with a fraction of its parameters."""
    c = channels if channels is not None else primary_groups * secondary_groups
    i = in_channels if in_channels is not None else c
    primary = groups(primary_groups, c, i)[shuffle_order(c, primary_groups)].float()
    secondary = groups(secondary_groups, c, c)[shuffle_order(c, secondary_groups)].float()
    return (secondary @ primary) > 0


def lenet5_c3() -> Matrix:
    """LeNet-5's S2 → C3 connection table (LeCun et al. 1998, Table I): 16 outputs, 6 inputs.
    C3 maps 0–5 read 3 contiguous S2 maps, 6–11 read 4 contiguous, 12–14 read 4 non-contiguous,
    15 reads all 6 (the table's X marks, by output column)."""
    reads = [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 0], [5, 0, 1],
             [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 0], [4, 5, 0, 1], [5, 0, 1, 2],
             [0, 1, 3, 4], [1, 2, 4, 5], [0, 2, 3, 5], [0, 1, 2, 3, 4, 5]]
    table = torch.zeros(16, 6, dtype=torch.bool)
    for o, inputs in enumerate(reads):
        table[o, inputs] = True
    return table


def random(density: float, out_channels: int | None = None, in_channels: int | None = None,
           seed: int = 0) -> Matrix | Pattern:
    """Each connection kept with probability `density` (a fixed seed: the same matrix every time)."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")

    def build(o: int, i: int) -> Matrix:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(o, i, generator=gen) < density

    return _sized(f"random({density})", build, out_channels, in_channels)


def blocks(matrix: Matrix) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Connected components of the bipartite graph of `matrix`: (block of each output [out],
    block of each input [in], number of blocks). Channels with no connection get -1. Blocks
    are numbered in the order of their first output channel."""
    m = matrix.bool().cpu()
    n_out, n_in = m.shape
    if n_out == 0 or n_in == 0:
        return torch.full((n_out,), -1, dtype=torch.long), torch.full((n_in,), -1, dtype=torch.long), 0
    # Outputs that read the same inputs are in one block, and so are inputs read by the same
    # outputs: the search runs on the distinct rows and columns only, which for a grouping
    # (any number of channels in G groups) is a G×G matrix, not out×in.
    rows, row_of = _distinct(m)
    cols, col_of = _distinct(rows.t())
    reduced = cols.t()  # [distinct rows, distinct columns]
    big = reduced.shape[0] + 1
    label = torch.arange(reduced.shape[0])
    # Label propagation: every row takes the smallest label among the rows it shares a column
    # with, until nothing changes (at most the graph's diameter rounds).
    while True:
        col_label = torch.where(reduced, label[:, None], big).amin(dim=0)
        new = torch.minimum(label, torch.where(reduced, col_label[None, :], big).amin(dim=1))
        if torch.equal(new, label):
            break
        label = new
    col_label = torch.where(reduced, label[:, None], big).amin(dim=0)
    out_label, in_label = label[row_of], col_label[col_of]
    connected_out, connected_in = m.any(dim=1), m.any(dim=0)
    # Blocks numbered by their first output channel.
    first = torch.full((big,), n_out, dtype=torch.long).scatter_reduce(
        0, out_label[connected_out], torch.arange(n_out)[connected_out], "amin")
    roots = torch.unique(out_label[connected_out])
    order = torch.argsort(first[roots])
    number = torch.full((big + 1,), -1, dtype=torch.long)
    number[roots[order]] = torch.arange(len(roots))
    out_block = torch.where(connected_out, number[out_label.clamp_max(big)], -1)
    in_block = torch.where(connected_in, number[in_label.clamp_max(big)], -1)
    return out_block, in_block, len(roots)


def _distinct(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct rows of a bool matrix, the index of each row among them). Rows are
    compared packed eight columns to a byte."""
    n, width = m.shape
    padded = torch.nn.functional.pad(m.to(torch.uint8), (0, (-width) % 8))
    packed = (padded.view(n, -1, 8) * torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)).sum(
        dim=2, dtype=torch.uint8)
    _, index = torch.unique(packed, dim=0, return_inverse=True)
    representative = torch.full((int(index.max()) + 1,), n, dtype=torch.long).scatter_reduce(
        0, index, torch.arange(n), "amin")
    return m[representative], index


def is_complete(matrix: Matrix, out_block: torch.Tensor, in_block: torch.Tensor) -> bool:
    """Whether every block connects all of its outputs to all of its inputs."""
    same = (out_block[:, None] == in_block[None, :]) & (out_block[:, None] >= 0)
    return bool(torch.equal(same, matrix.bool().cpu()))


def connectivity_of(module: nn.Module) -> Matrix:
    """The current [out, in] connection matrix of a layer: its own `connectivity()` when it has
    one (learned and fixed sparse layers), else read from a conv's or linear layer's weights
    (a zero kernel is no connection: SSL's dead filters, channels and grouped convs alike)."""
    if hasattr(module, "connectivity") and callable(module.connectivity):
        return module.connectivity().bool().cpu()
    if isinstance(module, nn.Conv2d):
        from learnsparse.layers.deployed import ungrouped_weight

        return ungrouped_weight(module).cpu().flatten(2).ne(0).any(dim=2)
    if isinstance(module, nn.Linear):
        return module.weight.detach().cpu().ne(0)
    raise TypeError(f"{type(module).__name__} has no connection matrix")
