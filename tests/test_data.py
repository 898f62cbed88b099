import pickle

import numpy as np
import pytest
import torch

from learnsparse.core.errors import UserError
from learnsparse.data import cifar10, cifar100, fashion_mnist, imagenet, synthetic
from learnsparse.data.fashion import read_idx

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


# ---- loaders: defaults, and data that does not depend on the workers ----------------------

def _cifar_loader(root, workers: int, persistent: bool | None = None, seed: int = 5):
    from learnsparse.core.distributed import DistEnv
    from learnsparse.engine.loaders import build_loaders

    train, _, generator = build_loaders(cifar10(str(root)), batch_size=8, eval_batch_size=8, num_workers=workers,
                                        pin_memory=True, device=torch.device("cpu"), dist_env=DistEnv(), seed=seed,
                                        persistent_workers=persistent)
    return train, generator


def _epochs(loader, generator, epochs):
    """Each epoch's images, iterated as the trainer does: reseed, set_epoch, go through it."""
    out = {}
    for e in epochs:
        generator.manual_seed(1000 + e)
        loader.sampler.set_epoch(e)
        out[e] = torch.cat([x for x, _ in loader])
    return out


def test_augmented_batches_do_not_depend_on_the_workers(tmp_path):
    """CIFAR's random crops and flips: a persistent pool that lived through epochs 0-1, a fresh
    pool started at epoch 2 (a resumed run), one worker and none give the same epochs."""
    write_cifar10(tmp_path, n_train=40, n_test=10)
    lived = _epochs(*_cifar_loader(tmp_path, 2), range(3))
    resumed = _epochs(*_cifar_loader(tmp_path, 2), [2])
    one = _epochs(*_cifar_loader(tmp_path, 1, persistent=False), range(3))
    none = _epochs(*_cifar_loader(tmp_path, 0), range(3))
    assert torch.equal(lived[2], resumed[2])
    assert all(torch.equal(lived[e], one[e]) and torch.equal(lived[e], none[e]) for e in range(3))
    assert not torch.equal(lived[1], lived[2])  # a new epoch: a new order and new crops
    other_seed = _epochs(*_cifar_loader(tmp_path, 1, seed=6), [2])
    assert not torch.equal(lived[2], other_seed[2])


def test_loading_without_workers_leaves_the_main_streams_alone(tmp_path):
    """With num_workers=0 the per-sample seeding runs in the main process: the torch, random and
    numpy streams that dropout and the checkpoint's RNG state follow come out as they went in,
    after a training epoch and after an evaluation."""
    import random

    write_cifar10(tmp_path, n_train=40, n_test=10)
    from learnsparse.core.distributed import DistEnv
    from learnsparse.engine.loaders import build_loaders

    train, val, _ = build_loaders(cifar10(str(tmp_path)), batch_size=8, eval_batch_size=8, num_workers=0,
                                  pin_memory=False, device=torch.device("cpu"), dist_env=DistEnv(), seed=5)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    for loader in (train, val):
        assert sum(len(x) for x, _ in loader) in (40, 10)
        assert torch.equal(torch.get_rng_state(), before[0])
        assert random.getstate() == before[1] and np.array_equal(np.random.get_state()[1], before[2])
        assert np.random.get_state()[2] == 624  # the position too: nothing drawn since the seed


def test_training_does_not_depend_on_the_workers_even_across_a_resume(tmp_path):
    """CIFAR files, crops and flips: 2 epochs with no workers end with the weights of a run with
    2 workers killed mid-epoch 1 and resumed from its step checkpoint with no workers."""
    import signal

    from learnsparse.core.checkpoint_io import load_checkpoint

    from .cli_runner import run_cli
    from .resume_checks import assert_same_training

    write_cifar10(tmp_path / "data", n_train=40, n_test=10)
    # 40 images, batch 16: 3 steps an epoch. A step checkpoint after each step; step 5 is killed
    # before its own, so the run resumes from step 4, the first step of epoch 1.
    common = ["trainer.device=cpu", "logger=none", "model=lenet5", "data=cifar10", f"data.root={tmp_path / 'data'}",
              "data.batch_size=16", "data.eval_batch_size=16", "trainer.epochs=2", f"paths.log_dir={tmp_path}"]
    none = run_cli(*common, "data.num_workers=0", f"hydra.run.dir={tmp_path}/none", tiny=False)
    assert none.returncode == 0, none.stderr[-2000:]
    killed = run_cli(*common, "data.num_workers=2", "trainer.checkpoint.every_steps=1", f"hydra.run.dir={tmp_path}/two",
                     "+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=5", tiny=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    step = load_checkpoint(tmp_path / "two/checkpoints/last.pt")
    assert (step["iter"], step["epoch"], step["epoch_step"]) == (4, 1, 1)  # mid-epoch: its RNG state restored
    resumed = run_cli(*common, "data.num_workers=0", "trainer.checkpoint.every_steps=1", f"hydra.run.dir={tmp_path}/two",
                      "trainer.resume=auto", tiny=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_checkpoint(tmp_path / "none/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "two/checkpoints/last.pt")
    assert a["iter"] == b["iter"] == 6
    assert_same_training(a, b)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion_mnist", "imagenet", "synthetic"])
def test_loader_defaults(name):
    """Every data config: persistent workers whenever there are workers, pinned memory on CUDA
    only, torch's prefetch depth."""
    from learnsparse.core.config_dir import compose
    from learnsparse.engine.loaders import loader_options

    data = compose([f"data={name}"]).data
    assert data.pin_memory is True and data.persistent_workers is None and data.prefetch_factor is None
    for workers in (0, 2):
        args = (workers, data.pin_memory, torch.device("cpu"), data.persistent_workers, data.prefetch_factor)
        on_cpu, on_cuda = loader_options(*args), loader_options(*args[:2], torch.device("cuda"), *args[3:])
        assert on_cpu["pin_memory"] is False and on_cuda["pin_memory"] is True
        assert on_cpu.get("persistent_workers", False) is (workers > 0)
        assert "prefetch_factor" not in on_cpu
    assert loader_options(2, True, torch.device("cpu"), False, 4) == dict(
        num_workers=2, pin_memory=False, persistent_workers=False, prefetch_factor=4)


def test_a_dataset_with_batched_getitems_loads_sample_by_sample():
    """torch's Subset has `__getitems__`; the per-sample seeding wrapper must not hand it the
    (index, seed) keys it passes to its own `__getitem__`."""
    from torch.utils.data import Subset

    from learnsparse.core.distributed import DistEnv
    from learnsparse.data import DataBundle
    from learnsparse.engine.loaders import build_loaders

    full = synthetic(train_size=20, val_size=4)
    bundle = DataBundle(Subset(full.train, range(10, 20)), full.val, 10, 3, 32, "subset")
    train, _, _ = build_loaders(bundle, batch_size=4, eval_batch_size=4, num_workers=0, pin_memory=False,
                                device=torch.device("cpu"), dist_env=DistEnv(), seed=0)
    images = torch.cat([x for x, _ in train])
    assert images.shape == (10, 3, 32, 32)
    expected = full.train.tensors[0][10:20]
    assert torch.equal(images[images[:, 0, 0, 0].argsort()], expected[expected[:, 0, 0, 0].argsort()])


def test_bench_dataloader_runs_and_prints_its_table(monkeypatch, capsys):
    """scripts/bench_dataloader.py at its smallest: the script keeps up with the loaders it times."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_dataloader.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--images", "20", "--epoch-images", "16", "--batch", "8",
                                      "--workers", "0", "1", "--rounds", "1", "--stage-runs", "1"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "images/s per core" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("| workers=")]
    assert len(rows) == 4 and rows[0].split("|")[3].strip() == "1.00x"
