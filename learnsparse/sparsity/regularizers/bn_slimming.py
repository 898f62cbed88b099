"""`sparsity=bn_slimming`: network slimming (Liu et al., 2017) — λ Σ|γ| on BatchNorm scales.

Channels whose γ goes to zero are pruned after training by a global percentile threshold
(`sparsity.threshold` with `layers: batchnorm`, `rule: percentile`), which kills γ and β together so that
the channel outputs exactly zero and the export can remove it.

`gamma_init` (the paper's 0.5) is for training from scratch: weights that
`trainer.init_from` loaded keep their trained γ unless `overwrite_loaded: true` asks
otherwise (resetting a trained network's γ wipes out what it learned).
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from learnsparse.core.provenance import loaded_from

from .penalty import GroupPenalty
from .selection_args import chosen_layers

log = logging.getLogger("learnsparse")


class BNSlimming(GroupPenalty):
    def __init__(self, model: nn.Module, strength: float = 1e-4, mode: str = "subgradient",
                 include: list[str] | None = None, exclude: list[str] | None = None, until: float = 1.0,
                 gamma_init: float | None = None, overwrite_loaded: bool = False):
        layers = [(n, m) for n, m in chosen_layers(model, "batchnorm", include, exclude) if m.affine]
        if gamma_init is not None and loaded_from(model) and not overwrite_loaded:
            log.info("bn_slimming: gamma_init=%g not applied: γ comes from %s (overwrite_loaded=true resets it)",
                     gamma_init, loaded_from(model))
            gamma_init = None
        if gamma_init is not None:  # the paper starts every γ at 0.5
            with torch.no_grad():
                for _, m in layers:
                    m.weight.fill_(gamma_init)
        super().__init__([(n, m.weight, "element") for n, m in layers], strength, mode, until)
