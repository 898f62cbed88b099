"""Regularizer plugins (`sparsity=<name>`): each adds a named penalty on groups of weights."""
from .bn_slimming import BNSlimming
from .group_lasso import GroupLasso
from .l1 import L1
from .penalty import GroupPenalty
from .ssl import SSLDepth, SSLFilterChannel, SSLShape

__all__ = ["BNSlimming", "GroupLasso", "GroupPenalty", "L1", "SSLDepth", "SSLFilterChannel", "SSLShape"]
