"""Fashion-MNIST from its gzipped IDX files.

Looked up, in order: `<root>/FashionMNIST/raw` (torchvision's layout), `<root>` itself, and
Debian's package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist). Only when none
has the files and `download=true` does torchvision fetch them into `<root>`.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import torch
from torch.utils.data import Dataset

from learnsparse.core.errors import UserError

from . import transforms as T
from .bundle import DataBundle
from .download import fetch

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (plain or .gz): big-endian dims after a magic of 0,0,dtype,ndim."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"fashion_mnist: {path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = data[4 + 4 * ndim:]
    expected = 1
    for d in dims:
        expected *= d
    if len(body) != expected:
        raise UserError(f"fashion_mnist: {path} is truncated ({len(body)} of {expected} bytes)")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(root: Path) -> Path | None:
    for directory in (root / "FashionMNIST" / "raw", root, DEBIAN_DIR):
        if all(_find(directory, stem) for pair in _FILES.values() for stem in pair):
            return directory
    return None


class IdxImages(Dataset):
    """uint8 images [N, H, W] and labels [N]; transforms see a [1, H, W] float tensor in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].unsqueeze(0).float().div_(255)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


def _train_transform():
    from torchvision import transforms as tvt

    return tvt.Compose([tvt.RandomCrop(28, padding=2), tvt.RandomHorizontalFlip(),
                        tvt.Normalize(T.FASHION_MEAN, T.FASHION_STD)])


def _val_transform():
    from torchvision import transforms as tvt

    return tvt.Normalize(T.FASHION_MEAN, T.FASHION_STD)


def fashion_mnist(root: str, download: bool = False, train_subset: int | None = None) -> DataBundle:
    """`train_subset` keeps the first N training images (for quick runs on a CPU)."""
    root_path = Path(root).expanduser()
    directory = _locate(root_path)
    if directory is None and download:
        from torchvision.datasets import FashionMNIST

        fetch("fashion_mnist", lambda: FashionMNIST(str(root_path), train=True, download=True), str(root_path))
        directory = _locate(root_path)
    if directory is None:
        raise UserError(
            f"fashion_mnist: IDX files not found under {root_path} or {DEBIAN_DIR}; set data.root=<folder that "
            f"holds them>, run 'apt-get install dataset-fashion-mnist', or set data.dataset.download=true"
        )
    splits = {}
    for split, (img_stem, lbl_stem) in _FILES.items():
        images, labels = read_idx(_find(directory, img_stem)), read_idx(_find(directory, lbl_stem))
        if len(images) != len(labels):
            raise UserError(f"fashion_mnist: {split} has {len(images)} images but {len(labels)} labels")
        splits[split] = (images, labels)
    images, labels = splits["train"]
    if train_subset is not None:
        images, labels = images[:train_subset], labels[:train_subset]
    train = IdxImages(images, labels, _train_transform())
    val = IdxImages(*splits["test"], _val_transform())
    return DataBundle(train, val, 10, 1, 28, "fashion_mnist")
