"""Compose the real configs and instantiate every option of every group."""

import math

import pytest
import torch
from hydra.utils import instantiate

from learnsparse import train
from learnsparse.core.config_dir import config_dir
from learnsparse.engine.run import build_plugins

from .helpers import write_cifar10, write_fashion_mnist, write_image_folder

CONFIGS = config_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("model"))
def test_every_model_config_instantiates(tiny_cfg, name):
    cfg = tiny_cfg(f"model={name}")
    model = instantiate(cfg.model)
    assert isinstance(model, torch.nn.Module)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", options("optim"))
def test_every_optimizer_config_instantiates(tiny_cfg, name):
    cfg = tiny_cfg(f"optim={name}")
    opt = instantiate(cfg.optim)(params=[torch.nn.Parameter(torch.zeros(3))])
    assert opt.param_groups[0]["lr"] == cfg.optim.lr


# What each shipped schedule must do over 100 steps of 10 per epoch, written from its config
# comment (not from its code): a schedule that drifts from its description fails here.
def _expected_lr(cfg, step: int, total: int = 100) -> float:
    kind = cfg.lr_scheduler._target_.rsplit(".", 1)[1]
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    if kind == "multistep":  # x gamma at each milestone: <= 1 a fraction of training, else an epoch
        bounds = [m * total if m <= 1 else m * 10 for m in cfg.lr_scheduler.milestones]
        return cfg.lr_scheduler.gamma ** sum(step >= b for b in bounds)
    raise AssertionError(f"lr_scheduler/{kind}: write what it must do here")


@pytest.mark.parametrize("name", options("lr_scheduler"))
def test_every_lr_schedule_config_follows_its_description(tiny_cfg, name):
    cfg = tiny_cfg(f"lr_scheduler={name}")
    assert cfg.lr_scheduler.warmup_epochs == 0  # the shipped defaults warm up only when asked
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=1.0)
    sched = instantiate(cfg.lr_scheduler)(opt, total_steps=100, steps_per_epoch=10)
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([_expected_lr(cfg, step) for step in range(100)])


@pytest.mark.parametrize("name", options("logger"))
def test_every_logger_config_writes_the_run(tiny_cfg, tmp_path, name):
    """Each logger, built from its config by a real run, writes what it says it writes."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_cfg(f"logger={name}", "model=lenet5", "data.dataset.image_size=28", "trainer.epochs=1"))
    expected = {"none": set(), "tensorboard": {"tensorboard"}}[name]  # a new logger: say what it writes
    folders = {p.parent.name for p in (tmp_path / "run").rglob("events.out.tfevents.*")}
    assert folders == expected
    if "tensorboard" in expected:
        events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"model/params", "epoch/train_loss_ce", "epoch/lr", "val/val_top1", "val/best_val_top1"} <= tags
        assert [e.step for e in events.Scalars("val/val_top1")] == [1]


@pytest.mark.parametrize("name", options("sparsity"))
def test_every_sparsity_config_instantiates(tiny_cfg, name):
    # condensenet needs learned group convs (a CondenseNet), ssl_depth residual blocks (a ResNet).
    model_name = {"condensenet": "condensenet_mini", "ssl_depth": "resnet20"}.get(name, "condensenet_mini_plain")
    cfg = tiny_cfg(f"model={model_name}", f"sparsity={name}")
    model = instantiate(cfg.model)
    plugins = build_plugins(cfg, model)
    assert [p.name for p in plugins] == list(cfg.sparsity.keys())


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes(tiny_cfg, name):
    cfg = tiny_cfg(f"experiment={name}")
    assert cfg.task_name != "train"  # an experiment names its own output folder


def test_every_data_config_loads_files_in_the_real_format(tmp_path):
    from learnsparse.core.config_dir import compose

    write_cifar10(tmp_path / "data")
    write_fashion_mnist(tmp_path / "data")
    write_image_folder(tmp_path / "data" / "imagenet")
    for name in options("data"):
        if name == "cifar100":
            continue  # written and checked in test_data.py; the layout differs
        cfg = compose([f"data={name}", f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path}"])
        bundle = instantiate(cfg.data.dataset)
        image, label = bundle.val[0]
        assert image.shape[0] == cfg.data.in_channels, name
        assert bundle.num_classes == cfg.data.num_classes or name == "imagenet", name


def test_train_yaml_has_every_group():
    text = (CONFIGS / "train.yaml").read_text()
    for group in ("model", "data", "optim", "lr_scheduler", "sparsity", "trainer", "logger", "paths", "experiment"):
        assert f"- {group}:" in text
        assert (CONFIGS / group).is_dir()
