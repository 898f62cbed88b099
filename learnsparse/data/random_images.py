"""Random images for smoke runs: each class adds its own fixed pattern, so a model can learn."""
import torch
from torch.utils.data import TensorDataset

from .bundle import DataBundle


def _make(n: int, num_classes: int, shape, patterns: torch.Tensor, g: torch.Generator):
    labels = torch.randint(num_classes, (n,), generator=g)
    images = torch.randn(n, *shape, generator=g) + patterns[labels]
    return TensorDataset(images, labels)


def synthetic(num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
              train_size: int = 512, val_size: int = 128, seed: int = 0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    shape = (in_channels, image_size, image_size)
    patterns = torch.randn(num_classes, *shape, generator=g)
    train = _make(train_size, num_classes, shape, patterns, g)
    val = _make(val_size, num_classes, shape, patterns, g)
    return DataBundle(train, val, num_classes, in_channels, image_size, "synthetic")
