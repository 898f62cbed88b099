"""CIFAR-10 and CIFAR-100 from torchvision's files (the python pickle batches)."""
import pickle
from pathlib import Path

from torchvision import datasets

from learnsparse.core.errors import UserError

from . import transforms as T
from .bundle import DataBundle
from .download import fetch


class _FilesPresent:
    """torchvision re-hashes every CIFAR file (170 MB) on each start and rejects any copy
    whose bytes differ from its release; we check that the files exist and let the
    unpickling itself report a damaged one."""

    def _check_integrity(self) -> bool:
        root = Path(self.root) / self.base_folder
        return all((root / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            data = pickle.load(f, encoding="latin1")
        self.classes = data[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class CIFAR10(_FilesPresent, datasets.CIFAR10):
    pass


class CIFAR100(_FilesPresent, datasets.CIFAR100):
    pass


def _cifar(cls, name: str, num_classes: int, mean, std, root: str, download: bool) -> DataBundle:
    root = str(Path(root).expanduser())
    if download:
        fetch(name, lambda: cls(root, train=True, download=True), root)
    try:
        train = cls(root, train=True, transform=T.small_image(32, 4, mean, std, True))
        val = cls(root, train=False, transform=T.small_image(32, 4, mean, std, False))
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError) as e:
        raise UserError(
            f"{name}: no readable {cls.base_folder}/ under {root}; set data.root=<folder that holds "
            f"{cls.base_folder}/>, or data.dataset.download=true to fetch it"
        ) from e
    return DataBundle(train, val, num_classes, 3, 32, name)


def cifar10(root: str, download: bool = False) -> DataBundle:
    return _cifar(CIFAR10, "cifar10", 10, T.CIFAR10_MEAN, T.CIFAR10_STD, root, download)


def cifar100(root: str, download: bool = False) -> DataBundle:
    return _cifar(CIFAR100, "cifar100", 100, T.CIFAR100_MEAN, T.CIFAR100_STD, root, download)
