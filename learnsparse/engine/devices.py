"""Device choice: CUDA when present (one device per torchrun process), else CPU."""
from __future__ import annotations

import torch

from learnsparse.core.errors import UserError


def select_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.device={preference} but no CUDA device is visible; use trainer.device=auto or cpu")
    if preference == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(preference)
