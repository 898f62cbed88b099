"""IGCConv → its two grouped convs, each followed by its permutation as an index gather.

The primary and secondary partitions are orthogonal by design (each secondary partition takes
one channel of every primary partition), so no channel order makes both groupings contiguous:
an exact graph of an IGC block needs one gather between its two grouped convs, and one where
its output meets a layer grouped differently. Both gathers are `PermutedGroupConv` indices, so
`fold_permutations` moves them into the next layer wherever that layer gathers anyway (the
interleaving becomes the secondary conv's input gather; the permutation back folds through
BatchNorm and ReLU into a following IGC block). The dense form — one k×k conv with the product
kernel — has no gather and the dense MACs; the export's tactics choose per layer.
"""
from __future__ import annotations

import torch.nn as nn

from learnsparse.layer_types import register_layer_type
from learnsparse.nn.igc import IGCConv
from learnsparse.nn.permuted_group_conv import PermutedGroupConv

from .dense_form import plain_conv


def convert(m: IGCConv) -> nn.Sequential:
    device = m.primary.weight.device
    return nn.Sequential(PermutedGroupConv(m.primary, None, m.interleave_order().to(device), m.in_channels),
                         PermutedGroupConv(m.secondary, None, m.back_order().to(device), m.out_channels))


def dense_form(m: IGCConv) -> nn.Conv2d:
    return plain_conv(m.composed_weight(), None, m.primary)


# A fixed structure: nothing learned to save, the constructor rebuilds it.
register_layer_type(IGCConv, converter=convert, dense_form=dense_form)
