"""Dataset builders: each returns a DataBundle (train, val, num_classes, in_channels, image_size)."""
from .bundle import DataBundle
from .cifar import cifar10, cifar100
from .fashion import fashion_mnist
from .image_folder import imagenet
from .random_images import synthetic

__all__ = ["DataBundle", "cifar10", "cifar100", "fashion_mnist", "imagenet", "synthetic"]
