"""The reference CondenseNet export's lossy classifier pruning, available on request.

It keeps the `keep` fraction of the classifier's inputs with the largest L1 norm over the
class weights and drops the rest without fine-tuning, so the exported network is *not* the
trained one. learnsparse's export is exact unless `classifier_keep` is set.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class IndexSelectLinear(nn.Module):
    def __init__(self, index: torch.Tensor, linear: nn.Linear):
        super().__init__()
        self.register_buffer("index", index)
        self.linear = linear

    def forward(self, x):
        return self.linear(x.index_select(1, self.index))


def prune_classifier_inputs(linear: nn.Linear, keep: float) -> IndexSelectLinear:
    if not 0 < keep <= 1:
        raise ValueError(f"classifier_keep must be in (0, 1], got {keep}")
    n = max(1, int(round(linear.in_features * keep)))
    index = linear.weight.detach().abs().sum(0).topk(n).indices.sort().values
    out = nn.Linear(n, linear.out_features, bias=linear.bias is not None).to(linear.weight.device)
    with torch.no_grad():
        out.weight.copy_(linear.weight[:, index])
        if linear.bias is not None:
            out.bias.copy_(linear.bias)
    return IndexSelectLinear(index, out)


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("classifier_keep needs a model with a final nn.Linear")
    return linears[-1]
