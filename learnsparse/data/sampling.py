"""Training data whose order and augmentations are functions of (seed, epoch, index) alone.

A DataLoader seeds each worker once, when it starts, and the worker's random crops and flips
follow that stream. With `persistent_workers` a worker lives for the whole run, so epoch 2's
augmentations continue epoch 1's stream: a run resumed at epoch 2 starts fresh workers and
sees other augmentations than the run that was never stopped. Mid-epoch, the same holds for
any worker. The order has the same flaw: `DataLoader(shuffle=True, generator=g)` shuffles
with `g` after a fresh worker pool has drawn its base seed from it, and a persistent pool
draws none. So here

- `EpochShuffle` orders the indices with a generator of its own, seeded by (seed, epoch);
- every sample is drawn from its own stream: `SeededSampler` passes `(index, seed)` pairs and
  `SeededDataset` seeds the `torch`, `random` and `numpy` generators (a worker's, or the main
  process's) from that seed before it calls the dataset.

The same images, in the same order, whatever the number of workers (none included),
persistent or not, and wherever a run was resumed. In the main process (`num_workers=0`) the
generators are the trainer's too: dropout draws from them, and a step checkpoint saves them.
There a batch is loaded between a save of their states and a restore, so loading draws nothing
from the trainer's streams, as with workers, and a run with no workers trains on the same
images, and with the same dropout, as one with 4.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a function of (seed, epoch, index) only (splitmix64 finaliser:
    neighbouring indices get unrelated seeds)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


class EpochShuffle(Sampler):
    """A random order of `range(size)`, a function of (seed, epoch) only. `set_epoch` (the
    trainer calls it every epoch, as for DistributedSampler) moves to the next order."""

    def __init__(self, size: int, seed: int):
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        # index -1: no sample has it, so the order's stream is none of the samples' streams.
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class SeededSampler(Sampler):
    """Yields `(index, seed)` for each index `sampler` yields. `set_epoch` (the trainer calls
    it every epoch, as for DistributedSampler) moves every sample to a new stream; attributes
    it does not have (a resumable sampler's position, say) are the wrapped sampler's."""

    def __init__(self, sampler, seed: int):
        self.sampler = sampler
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        for index in self.sampler:
            yield index, sample_seed(self.seed, self.epoch, int(index))

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name: str):
        # Not dunders (protocols are this class's own), nor `sampler` before it is set (unpickling).
        if name.startswith("__") or name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)


class SeededDataset(Dataset):
    """`dataset[index]`, with the random generators seeded from the sample's seed."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys):
        """A batch (DataLoader calls this, the fetch of `batch_size` keys, when it exists)."""
        if get_worker_info() is not None:  # a worker's generators are its own
            return [self._load(key) for key in keys]
        # Saved once a batch, not per sample: numpy's state alone costs ~250 us to save and restore.
        with _streams_kept():
            return [self._load(key) for key in keys]

    def _load(self, key):
        index, seed = key
        # The CPU generator alone: torch.manual_seed also seeds every accelerator and costs
        # ~100x more (120 us against 1 us per sample).
        torch.random.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        return self.dataset[index]

    def __getattr__(self, name: str):
        # Not dunders: protocols are this class's own (the wrapped dataset's batched `__getitems__`
        # knows nothing of (index, seed) keys). Nor `dataset` before it is set (unpickling).
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


@contextlib.contextmanager
def _streams_kept():
    """The main process's CPU `torch`, `random` and `numpy` states, as they were before."""
    states = torch.random.default_generator.get_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.random.default_generator.set_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
