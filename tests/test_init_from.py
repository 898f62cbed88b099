"""Pretrained starting points: `trainer.init_from` with a plain state dict or a torchvision
weights file, and `model=tv_* model.weights=DEFAULT` (from torchvision's cache: nothing
downloads in the tests)."""
import pytest
import torch
import torchvision
from hydra.utils import instantiate

from learnsparse.core.errors import UserError
from learnsparse.engine.init_weights import load_init
from learnsparse.engine.run import build_model_and_plugins, find_start
from learnsparse.models import create_model

from .cli_runner import run_cli
from .test_cli_errors import assert_one_line_error

LENET = ["model=lenet5", "data.dataset.image_size=28"]


def _lenet_state(num_classes=7, seed=1) -> dict:
    torch.manual_seed(seed)
    return create_model("lenet5", num_classes=num_classes, in_channels=3).state_dict()


def _head(state: dict) -> str:
    return list(state)[-1].rpartition(".")[0]


def _start(tiny_cfg, *overrides):
    cfg = tiny_cfg(*overrides)
    model, _ = build_model_and_plugins(cfg, find_start(cfg))
    return model


def test_init_from_a_plain_state_dict_with_a_new_head(tiny_cfg, tmp_path, caplog):
    saved = _lenet_state(num_classes=7)
    torch.save(saved, tmp_path / "mine.pt")
    with caplog.at_level("INFO", logger="learnsparse"):
        model = _start(tiny_cfg, *LENET, f"trainer.init_from={tmp_path / 'mine.pt'}")
    head = _head(saved)
    own = model.state_dict()
    for k, v in saved.items():
        if not k.startswith(head + "."):
            assert torch.equal(own[k], v), k
    assert own[f"{head}.weight"].shape[0] == 10 and saved[f"{head}.weight"].shape[0] == 7
    assert f"new head {head} with 10 outputs" in caplog.text


def test_init_from_takes_wrapped_and_ddp_saved_state_dicts(tiny_cfg, tmp_path):
    saved = _lenet_state(num_classes=10)
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.items()}, "epoch": 3}, tmp_path / "wrapped.pt")
    model = _start(tiny_cfg, *LENET, f"trainer.init_from={tmp_path / 'wrapped.pt'}")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


@pytest.fixture
def torchvision_cache(tmp_path, monkeypatch):
    """ResNet-18's DEFAULT weights file in torchvision's cache, as a first download leaves it
    (here random weights under the real file name)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    path = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    torch.manual_seed(2)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    return path, state


def test_tv_model_weights_default_loads_torchvisions_weights(torchvision_cache, tiny_cfg):
    _, state = torchvision_cache
    cfg = tiny_cfg("model=tv_resnet18", "model.weights=DEFAULT", "data.in_channels=1")
    model = instantiate(cfg.model)  # 10 classes, 1 input channel
    own = model.state_dict()
    for k, v in state.items():
        if not k.startswith(("fc.", "conv1.")):
            assert torch.equal(own[k], v), k
    assert own["fc.weight"].shape == (10, 512)
    # The RGB filters folded onto the one grey channel: a grey image gives its RGB copy's response.
    assert torch.allclose(own["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    same = create_model("tv_resnet18", num_classes=1000, in_channels=3, weights="IMAGENET1K_V1").state_dict()
    assert all(torch.equal(same[k], v) for k, v in state.items())


def test_unknown_weights_name_lists_the_known_ones(torchvision_cache):
    with pytest.raises(UserError, match="IMAGENET1K_V1"):
        create_model("tv_resnet18", num_classes=10, weights="IMAGENET_V9")


def test_init_from_a_torchvision_weights_file(torchvision_cache, tiny_cfg):
    path, state = torchvision_cache
    model = _start(tiny_cfg, "model=tv_resnet18", f"trainer.init_from={path}")
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert own["fc.weight"].shape == (10, 512)


def test_missing_and_unexpected_keys_are_listed_by_name(tmp_path):
    saved = _lenet_state(num_classes=10)
    first = next(iter(saved))
    saved["extra.weight"] = torch.zeros(3)
    del saved[first]
    torch.save(saved, tmp_path / "odd.pt")
    proc = run_cli(*LENET, f"trainer.init_from={tmp_path / 'odd.pt'}", f"hydra.run.dir={tmp_path}/run")
    assert_one_line_error(proc, f"the model's {first} are not in the file", "the file's extra.weight are not in")


def test_a_shape_mismatch_is_one_clear_line(tmp_path):
    saved = _lenet_state(num_classes=10)
    first = next(iter(saved))
    saved[first] = torch.zeros(saved[first].shape[0] + 2, *saved[first].shape[1:])
    torch.save(saved, tmp_path / "wide.pt")
    proc = run_cli(*LENET, f"trainer.init_from={tmp_path / 'wide.pt'}", f"hydra.run.dir={tmp_path}/run")
    assert_one_line_error(proc, f"{first} is {list(saved[first].shape)} in the file")


def test_a_pickled_model_is_refused_with_the_fix(tmp_path):
    torch.save(create_model("lenet5", num_classes=10, in_channels=3), tmp_path / "whole.pt")
    with pytest.raises(UserError, match=r"model.state_dict\(\)"):
        load_init(tmp_path / "whole.pt")
