"""Hard group assignments from scores: free (argmax) or balanced (equal group sizes).

The balanced assignment is deferred acceptance (Gale–Shapley) with group capacities: every
unassigned item proposes to its best group that has not refused it; each group keeps its
`capacity` best-scoring proposers and refuses the rest. Every round is a few vectorized ops
over all items; it ends in at most `groups` rounds per item and gives every group
⌊n/G⌋ or ⌈n/G⌉ items.
"""
from __future__ import annotations

import torch


def group_capacities(n: int, groups: int, device=None) -> torch.Tensor:
    cap = torch.full((groups,), n // groups, dtype=torch.long, device=device)
    cap[: n % groups] += 1
    return cap


def _rank_within_group(group: torch.Tensor, score: torch.Tensor, groups: int) -> torch.Tensor:
    """Position of each item among the items of its group, best score first."""
    by_score = torch.argsort(score, descending=True, stable=True)
    order = by_score[torch.argsort(group[by_score], stable=True)]
    counts = torch.bincount(group, minlength=groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(group)
    rank[order] = torch.arange(len(group), device=group.device) - starts[group[order]]
    return rank


@torch.no_grad()
def balanced_assignment(scores: torch.Tensor) -> torch.Tensor:
    """scores [n, G] → group index [n], each group of size ⌊n/G⌋ or ⌈n/G⌉."""
    n, groups = scores.shape
    cap = group_capacities(n, groups, scores.device)
    assign = torch.full((n,), -1, dtype=torch.long, device=scores.device)
    refused = torch.zeros(n, groups, dtype=torch.bool, device=scores.device)
    items = torch.arange(n, device=scores.device)
    while bool((assign < 0).any()):
        free = assign < 0
        proposal = scores.masked_fill(refused, float("-inf")).argmax(1)
        candidate = torch.where(free, proposal, assign)
        rank = _rank_within_group(candidate, scores[items, candidate], groups)
        keep = rank < cap[candidate]
        refused[items[~keep], candidate[~keep]] = True
        assign = torch.where(keep, candidate, torch.full_like(candidate, -1))
    return assign


def hard_assignment(logits: torch.Tensor, balanced: bool) -> torch.Tensor:
    return balanced_assignment(logits.detach()) if balanced else logits.detach().argmax(1)
