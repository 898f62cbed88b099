"""A sampler that can start an epoch part-way through, for mid-epoch resume.

A step checkpoint records how many samples of the epoch this rank has consumed; the resumed
run asks for the same epoch's order (a function of (seed, epoch) alone: EpochShuffle or
DistributedSampler) and skips that many indices *here*, before any index reaches a worker,
so no skipped image is read or decoded. The skip holds for one pass only: the next epoch
starts at its beginning.
"""
from __future__ import annotations

import itertools

from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def start_at(self, position: int) -> None:
        """The next pass begins after the first `position` indices of this epoch's order."""
        if not 0 <= position <= len(self.sampler):
            raise ValueError(f"cannot start the epoch at sample {position}: this rank has {len(self.sampler)}")
        self._start = int(position)

    def __iter__(self):
        start, self._start = self._start, 0
        # The order is computed whole (a permutation of indices, no data), then cut.
        return itertools.islice(iter(self.sampler), start, None)

    def __len__(self) -> int:
        # The full epoch: the trainer's steps per epoch (and the LR schedule) must not change
        # because one pass started late.
        return len(self.sampler)

    def state_dict(self, position: int) -> dict:
        return {"epoch": self.epoch, "position": int(position), "size": len(self.sampler)}
