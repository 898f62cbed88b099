"""Knowledge distillation (`distill=kd`): the loss term, the teacher, resume, every method."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from hydra.utils import instantiate

from learnsparse import train
from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.core.config_dir import compose
from learnsparse.core.errors import UserError
from learnsparse.core.record import rebuild
from learnsparse.distill import KnowledgeDistillation
from learnsparse.distill.kd import kd_divergence
from learnsparse.engine import Trainer
from learnsparse.engine.run import build_model_and_plugins, find_start
from learnsparse.models import create_model

from .cli_runner import run_cli
from .conftest import TINY
from .test_cli_errors import assert_one_line_error

LENET = ["model=lenet5", "data.dataset.image_size=28"]


def _cfg(root, name, *overrides):
    return compose([*TINY, f"paths.output_dir={root / name}", f"paths.log_dir={root}", *overrides])


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A LeNet-5 trained for 2 epochs on the synthetic task: the teacher and starting point."""
    root = tmp_path_factory.mktemp("dense")
    train(_cfg(root, "run", *LENET, "trainer.epochs=2", "optim.lr=0.02"))
    return root / "run" / "checkpoints" / "last.pt"


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_kd_run_shows_loss_kd_and_resumes_bit_exactly_after_a_kill(tmp_path, dense):
    common = [*LENET, "trainer.epochs=3", "data.dataset.train_size=96", f"paths.log_dir={tmp_path}", "distill=kd",
              f"trainer.init_from={dense}"]
    full = run_cli(*common, f"hydra.run.dir={tmp_path}/full")
    assert full.returncode == 0, full.stderr
    killed = run_cli(*common, f"hydra.run.dir={tmp_path}/crash", "+callbacks.kill._target_=tests.helpers.KillAtStep",
                     "+callbacks.kill.step=4")  # 3 steps an epoch: mid-epoch 2
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(*common, f"hydra.run.dir={tmp_path}/crash", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr

    lines = _metrics(tmp_path / "full")
    assert all(line["train_loss_kd"] > 0 for line in lines)
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "crash/checkpoints/last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["iter"] == b["iter"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # The teacher is not in the checkpoint: the model's keys only, no state for the hook.
    assert set(a["model"]) == set(rebuild(a["record"]).state_dict())
    assert not a["hooks"].get("distill")
    # The student moved away from where it started (it trains), the teacher stayed the same.
    start = load_checkpoint(dense)["model"]
    assert any(not torch.equal(start[k], a["model"][k]) for k in start)


def _val_kl(ckpt_path, student_state, data_cfg) -> float:
    """KL(teacher ‖ student) over the validation split, at T = 1."""
    ckpt = load_checkpoint(ckpt_path)
    teacher = rebuild(ckpt["record"]).eval()
    teacher.load_state_dict(ckpt["model"])
    student = rebuild(ckpt["record"]).eval()
    student.load_state_dict(student_state)
    images = torch.stack([x for x, _ in instantiate(data_cfg).val])
    with torch.no_grad():
        return float(kd_divergence(student(images), teacher(images)))


def test_a_student_trained_with_kd_moves_toward_the_teacher(tmp_path, dense):
    torch.manual_seed(123)
    start = tmp_path / "student_start.pt"  # a plain state dict: another random LeNet-5
    torch.save(create_model("lenet5", num_classes=10, in_channels=3).state_dict(), start)
    runs = {}
    for name, extra in (("kd", ["distill=kd", f"distill.teacher={dense}", "distill.alpha=1.0",
                                "distill.temperature=2.0"]), ("labels", [])):
        cfg = _cfg(tmp_path, name, *LENET, "trainer.epochs=3", f"trainer.init_from={start}", *extra)
        train(cfg)
        runs[name] = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]
    before = _val_kl(dense, torch.load(start), cfg.data.dataset)
    after_kd = _val_kl(dense, runs["kd"], cfg.data.dataset)
    after_labels = _val_kl(dense, runs["labels"], cfg.data.dataset)
    assert after_kd < 0.5 * before, (before, after_kd)
    assert after_kd < after_labels, (after_kd, after_labels)  # nearer the teacher than labels alone get it
    kd = _metrics(tmp_path / "kd")
    assert kd[-1]["train_loss_kd"] < kd[0]["train_loss_kd"]
    assert kd[-1]["train_loss_ce"] == 0.0  # alpha = 1: the labels have no weight


@pytest.fixture(scope="module")
def dense_of(tmp_path_factory):
    """A dense checkpoint of each model, trained one tiny epoch, made once."""
    made = {}

    def get(model):
        if model not in made:
            root = tmp_path_factory.mktemp(f"dense_{model}")
            train(_cfg(root, "run", f"model={model}", "trainer.epochs=1", "data.dataset.train_size=64"))
            made[model] = root / "run" / "checkpoints" / "last.pt"
        return made[model]

    return get


SLOW = pytest.mark.slow


@pytest.mark.parametrize("model, sparsity", [
    ("resnet20", "[bn_slimming,threshold]"),  # the cut shrinks the network mid-run
    ("resnet20", "flgc"),  # the plugin swaps layers as it is built: the teacher keeps the dense ones
    pytest.param("resnet20", "[ssl_filter_channel,threshold]", marks=SLOW),
    pytest.param("resnet20", "group_lasso", marks=SLOW),
    pytest.param("resnet20", "lgc", marks=SLOW),
    pytest.param("condensenet_mini", "condensenet", marks=SLOW),
])
def test_kd_combines_with_every_sparsity_method(tmp_path, dense_of, model, sparsity):
    train(_cfg(tmp_path, "kd", f"model={model}", f"sparsity={sparsity}", "trainer.epochs=2", "distill=kd",
               "data.dataset.train_size=64", f"trainer.init_from={dense_of(model)}"))
    lines = _metrics(tmp_path / "kd")
    assert all(line["train_loss_kd"] >= 0 and "val_top1" in line for line in lines)
    assert any(line["train_loss_kd"] > 0 for line in lines)


class _Teacher(nn.Module):
    """BatchNorm and dropout: eval mode shows in both."""

    def __init__(self):
        super().__init__()
        self.bn, self.drop, self.fc = nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.drop(self.bn(x)))


def test_the_teacher_runs_in_eval_mode_under_no_grad_and_under_autocast():
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), _Teacher()
    bn_before = teacher.bn.running_mean.clone()
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    trainer = Trainer(student, torch.optim.SGD(student.parameters(), lr=0.1), data, epochs=1,
                      device=torch.device("cpu"), amp="bf16")
    hook = KnowledgeDistillation(student, teacher, temperature=2.0, alpha=0.5)
    hook.name = "distill"
    seen = []
    original = teacher.forward

    def spy(x):
        seen.append((teacher.training, torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return original(x)

    teacher.forward = spy
    trainer.register_hooks([hook])
    trainer.train()
    assert seen == [(False, False, True)] * 3
    assert torch.equal(teacher.bn.running_mean, bn_before)  # eval mode: no statistics updated
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert trainer.ce_weight == 0.5 and set(trainer.losses) == {"loss_ce", "loss_kd", "loss_total"}


def test_loss_kd_is_alpha_t2_kl():
    student, teacher = torch.randn(5, 7), torch.randn(5, 7)
    p_t = torch.softmax(teacher / 3, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student / 3, 1))).sum(1).mean()
    assert torch.allclose(kd_divergence(student, teacher, 3.0), kl, atol=1e-6)
    assert float(kd_divergence(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-6)


def test_teacher_self_without_init_from_is_one_line(tmp_path):
    proc = run_cli(*LENET, "distill=kd", f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run")
    assert_one_line_error(proc, "distill.teacher=self", "trainer.init_from")


@pytest.mark.parametrize("overrides, message", [
    (["distill.teacher=/no/such/teacher.pt"], "distill.teacher=/no/such/teacher.pt: no such file"),
    (["distill.alpha=2"], "distill: alpha must be in [0, 1], got 2"),
    (["distill.temperature=0"], "distill: temperature must be > 0"),
])
def test_bad_distill_settings_name_the_setting(tiny_cfg, dense, overrides, message):
    cfg = tiny_cfg(*LENET, "distill=kd", f"trainer.init_from={dense}", *overrides)
    with pytest.raises(UserError) as e:
        build_model_and_plugins(cfg, find_start(cfg))
    assert message in str(e.value)


def test_kd_under_two_process_ddp_keeps_the_ranks_identical(tmp_path, dense):
    """Each rank runs its own teacher on its own shard; DDP averages the students' gradients."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29523",
           "-m", "learnsparse.cli", *TINY, *LENET, "distill=kd", f"distill.teacher={dense}",
           "trainer.channels_last=true", "trainer.epochs=1", f"hydra.run.dir={tmp_path}/run",
           "+callbacks.save._target_=tests.helpers.SaveWeightsAtEnd", f"+callbacks.save.directory={tmp_path}/weights"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "weights/rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "weights/rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert _metrics(tmp_path / "run")[-1]["train_loss_kd"] > 0
