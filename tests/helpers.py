"""Hooks and file writers that tests plug in through the real configs."""
from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path

import numpy as np
import torch

from learnsparse.engine import HookBase


class KillAtStep(HookBase):
    """SIGKILL this process at a given global step: a crash with no chance to clean up."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self) -> None:
        if self.trainer.iter == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class DeployedTrainsFaster(HookBase):
    """In this process, the in-training timing of forms finds every layer twice as fast
    deployed: a run with `trainable_form=measure` then chooses deterministically, as it would on
    a machine where that holds. Built with the run, so before any plugin's before_train."""

    def __init__(self):
        from learnsparse.sparsity import trainable_forms

        def fixed(forms, x, amp_dtype=None, rounds=9):
            return {trainable_forms.MASKED: 2.0, trainable_forms.DEPLOYED: 1.0}

        trainable_forms.training_step_ms = fixed


class SaveWeightsAtEnd(HookBase):
    """Write this rank's final weights to `<directory>/rank<r>.pt`."""

    def __init__(self, directory: str):
        self.directory = Path(directory)

    def after_train(self) -> None:
        rank = int(os.environ.get("RANK", "0"))
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.trainer.unwrapped_model.state_dict(), self.directory / f"rank{rank}.pt")


def resnet_cifar_params(depth: int, num_classes: int, widths=(16, 32, 64)) -> int:
    """Parameters of He et al.'s CIFAR ResNet (3x3 convs without bias, BatchNorm, a 1x1 conv +
    BN projection where the width changes, i.e. shortcut option B), counted by hand: ResNet-20
    with 10 classes has 272,474 (269,722 of them without the two projections)."""
    blocks = (depth - 2) // 6  # per stage, two 3x3 convs each
    total = 3 * widths[0] * 9 + 2 * widths[0]  # stem conv + BN
    width_in = widths[0]
    for w in widths:
        for b in range(blocks):
            total += (width_in if b == 0 else w) * w * 9 + w * w * 9 + 4 * w  # two convs, two BNs
            if b == 0 and width_in != w:
                total += width_in * w + 2 * w  # projection shortcut: 1x1 conv + BN
        width_in = w
    return total + widths[-1] * num_classes + num_classes  # the classifier


def write_cifar10(root: Path, n_train: int = 20, n_test: int = 10, num_classes: int = 10) -> Path:
    """The real CIFAR-10 python layout: pickled dicts of uint8 rows (3072 = 3 x 32 x 32)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "labels": rng.integers(0, num_classes, n).tolist()}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train // 5), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(num_classes)]}, f)
    return root


def write_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 3, size: int = 40) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    import gzip

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path, n_train: int = 30, n_test: int = 10) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return root


class CountBuilds(HookBase):
    """Adds a line to `path` each time it is built: a run whose config is built twice shows two."""

    def __init__(self, path: str):
        with open(path, "a") as f:
            f.write("built\n")


class NaNAtStep(HookBase):
    """Adds a NaN loss term at one global step, as a diverging run would."""

    def __init__(self, step: int):
        self.step = step

    @property
    def loss_names(self):
        return ("loss_reg_nan",)

    def extra_losses(self):
        if self.trainer.iter == self.step:
            return {"loss_reg_nan": torch.tensor(float("nan"))}
        return {}


class FixedLossTerm(HookBase):
    """Adds a zero loss term under a name it declares (to test clashes between hooks)."""

    def __init__(self, term: str):
        self.term = term

    @property
    def loss_names(self):
        return (self.term,)

    def extra_losses(self):
        return {self.term: torch.zeros(())}
