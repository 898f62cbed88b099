"""Seeding. Every epoch starts from RNG states derived from (seed, epoch) alone, so an
epoch's data order, augmentations and dropout do not depend on how the run got there —
which is what makes a resumed run end with the same weights as an uninterrupted one."""
import random

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
