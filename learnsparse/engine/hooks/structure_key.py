"""A fingerprint of the network's structure as the export sees it, for `best.pt`.

The export removes what is exactly zero (filters, channels, fibres, masked connections) and
deploys the layers the model holds, so the structure of an epoch's network is the name and
shape of every parameter and buffer and the count of its exact zeros. A plugin that cuts
(threshold-and-freeze), condenses (a mask buffer loses entries) or swaps layers in training
changes it; ordinary training steps do not (a weight lands on exactly 0.0 only when something
put it there). Computed once per epoch: one comparison per tensor.
"""
from __future__ import annotations

import hashlib
from itertools import chain

import torch
import torch.nn as nn


@torch.no_grad()
def structure_key(model: nn.Module) -> str:
    tensors = list(chain(model.named_parameters(), model.named_buffers()))
    entries = [(name, tuple(t.shape), int((t == 0).sum())) for name, t in tensors]
    return hashlib.sha256(repr(entries).encode()).hexdigest()
