"""Fetching a dataset with torchvision, with a failure the user can act on."""
from __future__ import annotations

from typing import Callable

from learnsparse.core.errors import UserError, first_line


def fetch(name: str, download: Callable[[], object], root: str) -> None:
    """Run torchvision's download; a network failure (offline machine, proxy, server down)
    is reported as what it is, not as missing files."""
    try:
        download()
    except (OSError, RuntimeError) as e:  # URLError and socket errors are OSErrors
        raise UserError(f"{name}: download into {root} failed ({first_line(e)}); put the files there yourself, "
                        f"or set data.root=<folder that holds them> and data.dataset.download=false") from e
