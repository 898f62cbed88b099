"""DataLoaders for a DataBundle: seeded shuffling, DistributedSampler under torchrun."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler

from learnsparse.data import DataBundle

from .distributed import DistEnv


def build_loaders(bundle: DataBundle, *, batch_size: int, eval_batch_size: int | None, num_workers: int,
                  pin_memory: bool, device: torch.device, dist_env: DistEnv, seed: int):
    """Returns (train_loader, val_loader, generator). The trainer reseeds the generator every
    epoch: it drives both the shuffle order and the worker seeds."""
    generator = torch.Generator().manual_seed(seed)
    common = dict(num_workers=num_workers, pin_memory=pin_memory and device.type == "cuda")
    if dist_env.enabled:
        train_sampler = DistributedSampler(bundle.train, dist_env.world_size, dist_env.rank, shuffle=True, seed=seed)
        val_sampler = DistributedSampler(bundle.val, dist_env.world_size, dist_env.rank, shuffle=False)
        train = DataLoader(bundle.train, batch_size, sampler=train_sampler, generator=generator, **common)
    else:
        val_sampler = None
        train = DataLoader(bundle.train, batch_size, shuffle=True, generator=generator, **common)
    val = DataLoader(bundle.val, eval_batch_size or batch_size, shuffle=False, sampler=val_sampler, **common)
    return train, val, generator
