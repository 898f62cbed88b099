"""Compose the real configs and instantiate every option of every group."""

import pytest
import torch
from hydra.utils import instantiate

from learnsparse.config_dir import config_dir
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


@pytest.mark.parametrize("name", options("lr_scheduler"))
def test_every_lr_schedule_config_instantiates(tiny_cfg, name):
    cfg = tiny_cfg(f"lr_scheduler={name}")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=1.0)
    sched = instantiate(cfg.lr_scheduler)(opt, total_steps=100, steps_per_epoch=10)
    for _ in range(99):
        opt.step()
        sched.step()
    assert 0.0 <= opt.param_groups[0]["lr"] <= 1.0


@pytest.mark.parametrize("name", options("logger"))
def test_every_logger_config_instantiates(tiny_cfg, name):
    cfg = tiny_cfg(f"logger={name}")
    hooks = [instantiate(node) for node in cfg.logger.values()]
    assert all(hasattr(h, "after_epoch") for h in hooks)


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
    from learnsparse.config_dir import compose

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
