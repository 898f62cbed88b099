import pickle

import numpy as np
import pytest
import torch

from learnsparse.data import cifar10, cifar100, fashion_mnist, imagenet, synthetic
from learnsparse.data.fashion import read_idx
from learnsparse.errors import UserError

from .helpers import write_cifar10, write_fashion_mnist, write_idx, write_image_folder


def test_cifar10_reads_python_pickle_batches(tmp_path):
    write_cifar10(tmp_path, n_train=20, n_test=10)
    b = cifar10(str(tmp_path))
    assert (len(b.train), len(b.val), b.num_classes, b.in_channels) == (20, 10, 10, 3)
    x, y = b.train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10


def test_cifar100_reads_its_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 8), ("test", 4)):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": rng.integers(0, 100, n).tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [str(i) for i in range(100)]}, f)
    b = cifar100(str(tmp_path))
    assert (len(b.train), len(b.val), b.num_classes) == (8, 4, 100)


def test_missing_cifar_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(UserError, match=rf"{tmp_path}.*download=true"):
        cifar10(str(tmp_path / "nowhere"))


def test_truncated_cifar_is_a_clear_error(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserError, match="no readable cifar-10-batches-py"):
        cifar10(str(tmp_path))


def test_imagenet_reads_image_folders_with_standard_transforms(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=2, size=300)
    b = imagenet(str(tmp_path))
    assert b.num_classes == 2
    assert b.train[0][0].shape == (3, 224, 224)
    assert b.val[0][0].shape == (3, 224, 224)


def test_imagenet_without_val_folder_says_which(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="val"):
        imagenet(str(tmp_path))


def test_fashion_mnist_reads_gzipped_idx(tmp_path):
    write_fashion_mnist(tmp_path, n_train=30, n_test=10)
    b = fashion_mnist(str(tmp_path), train_subset=12)
    assert (len(b.train), len(b.val), b.in_channels) == (12, 10, 1)
    assert b.val[0][0].shape == (1, 28, 28)


def test_truncated_idx_is_refused(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((4, 28, 28)))
    import gzip

    data = gzip.open(tmp_path / "x.gz").read()[:-5]
    with gzip.open(tmp_path / "y.gz", "wb") as f:
        f.write(data)
    assert read_idx(tmp_path / "x.gz").shape == (4, 28, 28)
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "y.gz")


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("learnsparse.data.fashion.DEBIAN_DIR", tmp_path / "none")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(str(tmp_path))


def test_synthetic_is_deterministic_and_learnable():
    a, b = synthetic(seed=3), synthetic(seed=3)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    # Class patterns make a nearest-mean classifier far better than chance.
    x, y = a.train.tensors
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    xv, yv = a.val.tensors
    pred = torch.cdist(xv.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == yv).float().mean() > 0.5
