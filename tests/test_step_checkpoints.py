"""Step checkpoints: a run SIGKILLed mid-epoch resumes from its last step checkpoint, at the
next batch of the same epoch, and ends bitwise where the uninterrupted run ends."""
import random
import signal
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from learnsparse.core.checkpoint_io import load_checkpoint, save_atomic
from learnsparse.core.distributed import DistEnv
from learnsparse.data import DataBundle
from learnsparse.engine.loaders import build_loaders
from learnsparse.engine.step_checkpoints import newest_valid, step_files

from .resume_checks import assert_same_training, run_train

# 96 images, batch 32: 3 steps per epoch, 4 epochs, 12 steps. Every method's last structure
# change (CondenseNet's last stage and swap, FLGC's freeze and swap, the threshold's freeze
# and shrink) comes at progress 0.5: step 6, the first of epoch 3.
SHAPE = ["data.dataset.image_size=16", "trainer.epochs=4", "data.dataset.train_size=96", "data.num_workers=2"]
RUNS = {"condensenet": ["model=condensenet_mini", "data.in_channels=1", "sparsity=condensenet",
                        "sparsity.condensenet.trainable_form=deployed"],  # every layer swaps, whatever the timing
        "flgc": ["model=resnet20", "sparsity=flgc", "sparsity.flgc.groups=3"],
        "ssl_threshold": ["model=resnet20", "sparsity=[ssl_filter_channel,threshold]",
                          "sparsity.threshold.rule=percentile", "sparsity.threshold.tau=0.5"]}
# Where each is killed (in the step's after_step, before its own checkpoint): before the last
# structure change, or after it. The last step checkpoint (every 2 steps; none at an epoch's
# last step, whose epoch checkpoint follows) is then mid-epoch: step 4 (1 of epoch 2),
# step 10 (1 of epoch 4), step 8 (2 of epoch 3).
KILL_AT = {"condensenet": 5, "flgc": 11, "ssl_threshold": 9}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each method's run without interruption (and without step checkpoints), run once."""
    done = {}

    def get(kind):
        if kind not in done:
            folder = tmp_path_factory.mktemp(f"full_{kind}")
            proc = run_train(*RUNS[kind], *SHAPE, f"hydra.run.dir={folder}", f"paths.log_dir={folder}")
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[kind] = load_checkpoint(folder / "checkpoints/last.pt")
        return done[kind]

    return get


# make test kills CondenseNet; FLGC and SSL + threshold, whose resumes test_resume's random-step
# kills cover for the defaults, run under -m slow.
@pytest.mark.parametrize("kind", [k if k == "condensenet" else pytest.param(k, marks=pytest.mark.slow)
                                  for k in sorted(RUNS)])
def test_sigkill_mid_epoch_resumes_from_the_step_checkpoint_bitwise(kind, tmp_path, uninterrupted):
    common = [*RUNS[kind], *SHAPE, "trainer.checkpoint.every_steps=2", f"paths.log_dir={tmp_path}",
              f"hydra.run.dir={tmp_path}/run"]
    killed = run_train(*common, "+callbacks.kill._target_=tests.helpers.KillAtStep",
                       f"+callbacks.kill.step={KILL_AT[kind]}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    step = (KILL_AT[kind] - 1) // 2 * 2
    assert ckpt["iter"] == step and 0 < ckpt["epoch_step"] < 3, (ckpt["iter"], ckpt["epoch_step"])
    assert ckpt["sampler"] == {"epoch": ckpt["epoch"], "position": 32 * ckpt["epoch_step"], "size": 96}

    resumed = run_train(*common, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at epoch {ckpt['epoch']} (step {step})" in resumed.stdout + resumed.stderr
    assert_same_training(uninterrupted(kind), load_checkpoint(tmp_path / "run/checkpoints/last.pt"))


@pytest.mark.slow  # the per-method mid-epoch kills above run in make test
def test_sigkill_at_a_random_moment_resumes_bitwise(tmp_path, uninterrupted):
    """Killed from outside at a moment the clock picks: mid-step, mid-save, anywhere."""
    common = [*RUNS["condensenet"], *SHAPE, "trainer.checkpoint.every_steps=1", "trainer.checkpoint.keep=3",
              f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run"]
    proc = run_train(*common, wait=False)
    folder = tmp_path / "run/checkpoints"
    deadline = time.monotonic() + 240
    while not step_files(folder) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    delay = random.uniform(0.0, 1.5)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
    resumed = run_train(*common, "trainer.resume=auto")
    assert resumed.returncode == 0, f"killed {delay:.2f}s after the first step checkpoint: {resumed.stderr[-3000:]}"
    assert_same_training(uninterrupted("condensenet"), load_checkpoint(folder / "last.pt"))
    assert len(step_files(folder)) <= 3  # keep=3


def test_keep_holds_the_newest_step_checkpoints_and_last_is_the_newest(tmp_path):
    proc = run_train("model=lenet5", "data.in_channels=1", "data.dataset.train_size=96", "trainer.epochs=1",
                     "trainer.checkpoint.every_steps=1", "trainer.checkpoint.keep=1", f"hydra.run.dir={tmp_path}",
                     "+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=3")
    assert proc.returncode == -signal.SIGKILL  # in step 3's after_step, before its checkpoint
    assert [p.name for p in step_files(tmp_path / "checkpoints")] == ["step-000000002.pt"]
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["iter"] == 2
    proc = run_train("model=lenet5", "data.in_channels=1", "data.dataset.train_size=128", "trainer.epochs=1",
                     "trainer.checkpoint.every_steps=1", "trainer.checkpoint.keep=2", f"hydra.run.dir={tmp_path}/k2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 4 steps: step checkpoints after steps 1, 2, 3 (the epoch's end writes last.pt itself).
    assert [p.name for p in step_files(tmp_path / "k2/checkpoints")] == ["step-000000002.pt", "step-000000003.pt"]
    assert load_checkpoint(tmp_path / "k2/checkpoints/last.pt")["iter"] == 4


def _ckpt(it: int) -> dict:
    return {"model": {"w": torch.zeros(3)}, "iter": it, "epoch": 0}


def test_resume_auto_takes_the_newest_valid_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    save_atomic(_ckpt(3), folder / "last.pt")
    save_atomic(_ckpt(5), folder / "step-000000005.pt")
    save_atomic(_ckpt(7), folder / "step-000000007.pt")
    assert newest_valid(folder).name == "step-000000007.pt"
    # A torn file (a full disk, a copy cut short) is passed over, not loaded.
    data = (folder / "step-000000007.pt").read_bytes()
    (folder / "step-000000007.pt").write_bytes(data[: len(data) // 2])
    assert newest_valid(folder).name == "step-000000005.pt"
    save_atomic(_ckpt(5), folder / "last.pt")
    assert newest_valid(folder).name == "last.pt"  # a tie goes to last.pt
    (folder / "last.pt").write_bytes(b"not a checkpoint")
    assert newest_valid(folder).name == "step-000000005.pt"


def test_bad_step_checkpoint_settings_are_one_line(tmp_path):
    proc = run_train("trainer.checkpoint.every_steps=0", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: trainer.checkpoint.every_steps must be a whole number ≥ 1 or null (got 0)"


class _Noisy(Dataset):
    """Each item a random draw (an augmentation's), and a record of which indices were read."""

    def __init__(self, n: int):
        self.n, self.read = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        self.read.append(index)
        return torch.rand(2), index


def _loader(dataset, workers: int) -> DataLoader:
    bundle = DataBundle(dataset, dataset, 2, 1, 1, "noisy")
    train, _, generator = build_loaders(bundle, batch_size=4, eval_batch_size=4, num_workers=workers,
                                        pin_memory=False, device=torch.device("cpu"), dist_env=DistEnv(), seed=3)
    return train, generator


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_epoch_sees_the_same_batches_and_skips_at_the_sampler(workers):
    full, _ = _loader(_Noisy(24), workers)
    full.sampler.set_epoch(5)
    torch.manual_seed(0)
    batches = list(full)
    resumed_data = _Noisy(24)
    resumed, _ = _loader(resumed_data, workers)
    resumed.sampler.set_epoch(5)
    resumed.sampler.start_at(2 * 4)  # two batches done
    rest = list(resumed)
    assert len(rest) == len(batches) - 2
    for (x, i), (y, j) in zip(batches[2:], rest):
        assert torch.equal(i, j)  # the same order
        if workers:  # and the same draws, whichever worker loads the sample (in-process loading
            assert torch.equal(x, y)  # draws from the trainer's stream, which a resume restores)
    if workers == 0:
        skipped = torch.cat([i for _, i in batches[:2]]).tolist()
        assert not set(skipped) & set(resumed_data.read)  # never read
    assert len(list(resumed)) == len(batches)  # the skip was for one pass


@pytest.mark.slow  # three compiled runs
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_run_killed_mid_epoch_resumes_bitwise(backend, tmp_path):
    """Compiled training is deterministic on a CPU (the same graphs, compiled again after the
    resume), so a compiled run resumes bit-exactly too; killed after the swap's recompile."""
    common = [*RUNS["condensenet"], *SHAPE, f"trainer.compile={{backend: {backend}}}",
              "trainer.checkpoint.every_steps=2", f"paths.log_dir={tmp_path}"]
    full = run_train(*common, f"hydra.run.dir={tmp_path}/full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run_train(*common, f"hydra.run.dir={tmp_path}/run", "+callbacks.kill._target_=tests.helpers.KillAtStep",
                       "+callbacks.kill.step=9")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["iter"] == 8
    resumed = run_train(*common, f"hydra.run.dir={tmp_path}/run", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(load_checkpoint(tmp_path / "full/checkpoints/last.pt"),
                         load_checkpoint(tmp_path / "run/checkpoints/last.pt"))
