"""DataLoaders for a DataBundle: seeded shuffling, DistributedSampler under torchrun, and
an order and augmentations that depend on (seed, epoch, index) only (learnsparse.data.sampling)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler

from learnsparse.core.distributed import DistEnv
from learnsparse.data import DataBundle
from learnsparse.data.sampling import EpochShuffle, SeededDataset, SeededSampler

from .resumable_sampler import ResumableSampler


def loader_options(num_workers: int, pin_memory: bool, device: torch.device, persistent_workers: bool | None = None,
                   prefetch_factor: int | None = None) -> dict:
    """The DataLoader keywords a config's `data` settings stand for (docs/data.md).

    - `persistent_workers` (null: on whenever there are workers): a fresh pool each epoch costs
      every worker's start-up and its copy of the dataset; docs/benchmarks.md, input pipeline.
    - `pin_memory` only on CUDA: page-locked batches are what lets the trainer's
      `non_blocking=True` copies overlap the step; on a CPU run it is a wasted copy.
    - `prefetch_factor` (batches each worker keeps ready; torch's default 2 when null).
    """
    options = dict(num_workers=num_workers, pin_memory=bool(pin_memory) and device.type == "cuda")
    if num_workers > 0:
        options["persistent_workers"] = True if persistent_workers is None else bool(persistent_workers)
        if prefetch_factor is not None:
            options["prefetch_factor"] = int(prefetch_factor)
    return options


def build_loaders(bundle: DataBundle, *, batch_size: int, eval_batch_size: int | None, num_workers: int,
                  pin_memory: bool, device: torch.device, dist_env: DistEnv, seed: int,
                  persistent_workers: bool | None = None, prefetch_factor: int | None = None):
    """Returns (train_loader, val_loader, generator). The trainer reseeds the generator every
    epoch (the workers' base seed). The training order is a function of (seed, epoch), and a
    sample's augmentation is drawn from a stream of its own, seeded by (seed, epoch, index): they
    do not depend on which worker loads it nor on how long that worker has lived (persistent
    workers, resume)."""
    generator = torch.Generator().manual_seed(seed)
    common = loader_options(num_workers, pin_memory, device, persistent_workers, prefetch_factor)
    if dist_env.enabled:
        train_sampler = DistributedSampler(bundle.train, dist_env.world_size, dist_env.rank, shuffle=True, seed=seed)
        val_sampler = DistributedSampler(bundle.val, dist_env.world_size, dist_env.rank, shuffle=False)
    else:
        train_sampler = EpochShuffle(len(bundle.train), seed)
        val_sampler = None
    # Resumable inside SeededSampler: a skipped index never reaches a worker (resumable_sampler.py).
    train_sampler = SeededSampler(ResumableSampler(train_sampler), seed)
    train = DataLoader(SeededDataset(bundle.train), batch_size, sampler=train_sampler,
                       generator=generator, **common)
    # A generator of its own: each DataLoader iterator draws a base seed from it, or else from the
    # global stream, and with no workers (a fresh iterator each evaluation) or a fresh pool that
    # draw would leave the trainer's stream other than a persistent pool does.
    val = DataLoader(bundle.val, eval_batch_size or batch_size, shuffle=False, sampler=val_sampler,
                     generator=torch.Generator().manual_seed(seed), **common)
    return train, val, generator
