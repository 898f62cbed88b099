"""Budgets: the exported network meets `budget.macs` / `budget.params` / `budget.latency`,
counted through the export's dependency graph, on the shipped models and on a user's own."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from learnsparse import train
from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.core.counting import count_params, macs_by_module
from learnsparse.core.errors import UserError
from learnsparse.export import condense_with_details
from learnsparse.export.from_checkpoint import export
from learnsparse.models import create_model
from learnsparse.sparsity import budget as budget_module
from learnsparse.sparsity.budget import Budget
from learnsparse.sparsity.budget_cost import exported_cost
from learnsparse.sparsity.threshold_freeze import ThresholdFreeze
from tests.budget_models import UserNet

SHAPE = [3, 16, 16]
USER_MODEL = {"_target_": "tests.budget_models.UserNet", "num_classes": 10, "in_channels": 3, "width": 16}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = UserNet() if name == "user" else create_model(name, num_classes=10, in_channels=3)
    with torch.no_grad():  # trained-looking BatchNorms: scales that differ, so the ranking is not a tie
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
                m.bias.uniform_(-0.1, 0.1)
    return model


def _freeze(model: nn.Module, budget: dict | None, **options) -> ThresholdFreeze:
    """Threshold-and-freeze at its `at`, with the trainer's part played by a stand-in."""
    plugin = ThresholdFreeze(model, at=0.5, shrink_in_training=False, budget=budget, **options)
    plugin.trainer = SimpleNamespace(progress=0.5, input_shape=SHAPE, epoch_metrics={},
                                     optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    plugin.before_train()
    plugin.before_step()
    return plugin


def _exported(model: nn.Module) -> nn.Module:
    return condense_with_details(model.eval(), torch.randn(2, *SHAPE), measure=False).model


def _macs(model: nn.Module) -> int:
    return macs_by_module(model, torch.zeros(1, *SHAPE))[""]


FAST = [("resnet20", 0.3), ("resnet20", 0.5), ("resnet20", 0.7), ("user", 0.3), ("user", 0.5), ("user", 0.7),
        ("vgg16_bn", 0.5), ("tv_resnet18", 0.3)]
SLOW = [("vgg16_bn", 0.3), ("vgg16_bn", 0.7), ("tv_resnet18", 0.5), ("tv_resnet18", 0.7)]


@pytest.mark.parametrize("name,target", FAST + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW])
def test_exported_macs_land_just_under_the_target(name, target):
    model = _model(name)
    dense = _macs(model)
    plugin = _freeze(model, {"macs": target})
    achieved = _macs(_exported(model)) / dense
    assert 0.95 * target <= achieved <= target, achieved
    # metrics.jsonl and TensorBoard get target and achieved; achieved is what the export measured
    plugin.after_epoch()
    metrics = plugin.trainer.epoch_metrics
    assert metrics["budget_macs_target"] == target
    assert metrics["budget_macs_achieved"] == pytest.approx(achieved)


def test_slimming_budget_ranks_batchnorm_scales_and_meets_params():
    model = _model("vgg16_bn")
    dense = count_params(model)
    _freeze(model, {"params": 0.4}, layers="batchnorm")
    achieved = count_params(_exported(model)) / dense
    assert 0.95 * 0.4 <= achieved <= 0.4


def test_ranking_is_global_and_lowest_first():
    """The channels cut are the lowest-ranked ones across layers: every kept filter of a
    pruned layer scores at least as high as every cut one of any layer (without round_to, in
    a network with no coupled residual channels)."""
    model = _model("vgg16_bn")
    with torch.no_grad():  # make one layer's filters clearly the weakest: it goes first
        model.features[3].weight.mul_(0.01)
    _freeze(model, {"macs": 0.8})
    conv = model.features[3]
    dead = (conv.weight.flatten(1) == 0).all(1)
    assert dead.sum() >= conv.out_channels - 1  # one is always kept, as the export does


@pytest.mark.parametrize("budget,options", [({"macs": 0.5, "round_to": 8}, {}),
                                            (None, {"rule": "percentile", "tau": 0.3, "round_to": 8})])
def test_round_to_keeps_every_thinned_width_a_multiple(budget, options):
    model = _model("resnet20")
    dense = _macs(model)
    _freeze(model, budget, **options)
    exported = _exported(model)
    widths = {n: m.out_channels for n, m in exported.named_modules() if isinstance(m, nn.Conv2d)}
    original = {n: m.out_channels for n, m in _model("resnet20").named_modules() if isinstance(m, nn.Conv2d)}
    assert any(widths[n] < original[n] for n in widths)  # something was thinned
    assert all(w % 8 == 0 for w in widths.values() if w != 3), widths
    if budget:
        assert _macs(exported) / dense <= 0.5


def test_budget_increments_replay_on_resume_without_timing(monkeypatch):
    """A latency budget times each increment's choice once; the record replays it (invariant 1)."""
    calls = []

    def fake_ratio(before, after, budget, example, device=None):  # latency follows the export's MACs here
        calls.append(1)
        return exported_cost(after, example) / exported_cost(before, example)

    monkeypatch.setattr(budget_module, "latency_ratio", fake_ratio)
    model = _model("resnet20")
    plugin = _freeze(model, {"latency": 0.6})
    assert calls and 0.55 <= plugin.budget_state.latency[1] <= 0.6  # the bisection gets near the target
    record = plugin.state_dict()
    calls.clear()
    again = _model("resnet20")
    plugin2 = ThresholdFreeze(again, at=0.5, shrink_in_training=False, budget={"latency": 0.6})
    plugin2.load_state_dict({**record, "frozen": False, "masks": {}})
    plugin2.budget_state.done = 0  # as if killed before the increment's checkpoint, with the choice on record
    plugin2.trainer = SimpleNamespace(progress=0.5, input_shape=SHAPE, epoch_metrics={},
                                      optimizer=torch.optim.SGD(again.parameters(), lr=0.1))
    plugin2.before_train()
    plugin2.before_step()
    assert not calls  # replayed, not re-timed
    for (n, m), m2 in zip(plugin.masks.items(), plugin2.masks.values()):
        assert torch.equal(m, m2), n


def test_default_budget_is_off(tiny_cfg):
    from learnsparse.engine.run import build_plugins

    cfg = tiny_cfg("model=resnet20", "sparsity=threshold")
    assert Budget.from_config(cfg.budget) is None
    (plugin, _report) = build_plugins(cfg, create_model("resnet20", num_classes=10, in_channels=3))
    assert plugin.budget is None and plugin.round_to is None


@pytest.mark.parametrize("overrides,message", [
    (["sparsity=threshold", "budget.macs=1.5"], "budget.macs must be a fraction"),
    (["sparsity=threshold", "budget.macs=0.5", "budget.params=0.5"], "set one of"),
    (["sparsity=threshold", "budget.latency=0.5", "budget.target=tensorrt"], "budget.target must be one of"),
    (["sparsity=none", "budget.macs=0.5"], "no sparsity plugin of this run meets a budget"),
])
def test_bad_budget_is_one_line(tiny_cfg, overrides, message):
    with pytest.raises(UserError, match=message) as e:
        train(tiny_cfg("model=resnet20", *overrides))
    assert "\n" not in str(e.value)


def _user_run(tiny_cfg, *overrides):
    cfg = tiny_cfg("sparsity=[ssl_filter_channel,threshold]", "sparsity.threshold.at=0.75", "budget.macs=0.5",
                   "budget.steps=2", "trainer.epochs=2", *overrides)
    cfg.model = OmegaConf.create(USER_MODEL)  # the user's `_target_` model
    return cfg


def test_budget_run_logs_and_reports_target_and_achieved(tiny_cfg, tmp_path):
    train(_user_run(tiny_cfg, "logger=tensorboard"))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(line["budget_macs_target"] == 0.5 for line in lines)
    # 2 increments (to 0.75 and 0.5 of the MACs) at progress 0.375 and 0.75: one per epoch
    assert 0.95 * 0.75 <= lines[0]["budget_macs_achieved"] <= 0.75
    assert 0.95 * 0.5 <= lines[1]["budget_macs_achieved"] <= 0.5
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [e.value for e in events.Scalars("epoch/budget_macs_achieved")] == pytest.approx(
        [line["budget_macs_achieved"] for line in lines])
    report = export(tmp_path / "run" / "checkpoints" / "last.pt", formats=["pt"], measure=False, latency_rounds=2)
    b = report["budget"]
    assert b["target"] == 0.5 and b["exported"] == report["macs_after"]
    assert b["achieved"] == pytest.approx(lines[-1]["budget_macs_achieved"])
    assert json.loads((tmp_path / "run" / "export" / "report.json").read_text())["budget"]["achieved"] == b["achieved"]
    assert "budget: macs 0.5" in report["table"]
    # The network shrank in training, so the trained model is thinner than the starting one;
    # the dense figures are the starting network's, not the trained one's.
    assert report["macs_before"] < 0.6 * report["macs_dense"]
    assert report["params_dense"] > report["params_before"]


@pytest.mark.parametrize("shrink", [pytest.param("false", marks=pytest.mark.slow), "true"])
def test_budget_run_resumes_bit_exactly(tiny_cfg, tmp_path, shrink):
    """With the network trained thinner after each increment (`shrink_in_training`, the default) and without."""
    from learnsparse.engine import NonFiniteLossError

    def run(*overrides):
        return _user_run(tiny_cfg, f"sparsity.threshold.shrink_in_training={shrink}", *overrides)

    full = train(run(f"paths.output_dir={tmp_path}/full"))
    # 4 steps per epoch: increment 1 at step 3, the epoch-1 checkpoint, a crash at step 7
    # (after increment 2 at step 6): the resumed run redoes increment 2 from the checkpoint.
    with pytest.raises(NonFiniteLossError):
        train(run(f"paths.output_dir={tmp_path}/part", "+callbacks.nan._target_=tests.helpers.NaNAtStep",
                  "+callbacks.nan.step=7"))
    assert load_checkpoint(tmp_path / "part/checkpoints/last.pt")["hooks"]["threshold"]["budget"]["done"] == 1
    resumed = train(run(f"paths.output_dir={tmp_path}/part", "trainer.resume=auto"))
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "part/checkpoints/last.pt")
    assert a["hooks"]["threshold"]["budget"]["done"] == b["hooks"]["threshold"]["budget"]["done"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert resumed["budget_macs_achieved"] == full["budget_macs_achieved"]


def _grouped_export_macs(method: str, setting: int) -> float:
    """resnet20 with every learned layer at its final structure, exported: its MACs ÷ dense."""
    from learnsparse import sparsify
    from learnsparse.layers.flgc_conv import FLGConv
    from learnsparse.layers.learned_group_conv import LearnedGroupConv

    model = _model("resnet20")
    dense = _macs(model)
    if method == "lgc":
        sparsify(model, "lgc", groups=2, condense_factor=setting)
    else:
        sparsify(model, "flgc", groups=setting, balanced=True)
    for m in model.modules():
        if isinstance(m, LearnedGroupConv):
            m.condense_to(m.max_stage)
        elif isinstance(m, FLGConv):
            m.freeze()
    return _macs(_exported(model)) / dense


@pytest.mark.parametrize("method", ["lgc", "flgc"])
def test_learned_grouping_budget_picks_the_smallest_setting_that_meets_it(tiny_cfg, method):
    """Checked by condensing (lgc) or freezing (flgc) every learned layer and exporting for real:
    the setting the budget picks meets it, one step finer does not."""
    from learnsparse.engine.run import build_plugins
    from learnsparse.layers.flgc_conv import FLGConv
    from learnsparse.layers.learned_group_conv import LearnedGroupConv

    cfg = tiny_cfg("model=resnet20", f"sparsity={method}", "budget.macs=0.5", f"sparsity.{method}.groups=2",
                   *(["sparsity.flgc.balanced=true"] if method == "flgc" else []))
    model = _model("resnet20")
    build_plugins(cfg, model, SHAPE)
    layers = [m for m in model.modules() if isinstance(m, (LearnedGroupConv, FLGConv))]
    settings = {int(m.condense_factor) if method == "lgc" else int(m.groups) for m in layers}
    assert len(settings) == 1
    setting = settings.pop()
    assert _grouped_export_macs(method, setting) <= 0.5
    assert setting == 2 or _grouped_export_macs(method, setting - 1) > 0.5


def test_learned_grouping_budget_out_of_reach_is_one_line(tiny_cfg):
    with pytest.raises(UserError, match="cannot be met by lgc: the best condense_factor") as e:
        train(tiny_cfg("model=resnet20", "sparsity=lgc", "budget.macs=0.01"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method", ["lgc", "flgc"])
def test_learned_grouping_budget_run_reports_target_and_achieved(tiny_cfg, tmp_path, method):
    cfg = tiny_cfg(f"sparsity={method}", "budget.macs=0.5", "trainer.epochs=2",
                   *(["sparsity.flgc.balanced=true"] if method == "flgc" else []))
    cfg.model = OmegaConf.create(USER_MODEL)
    train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(line["budget_macs_target"] == 0.5 and line["budget_macs_achieved"] <= 0.5 for line in lines)
    report = export(tmp_path / "run" / "checkpoints" / "last.pt", formats=["pt"], measure=False, latency_rounds=2)
    # the export of the trained network is what the budget's trial export measured (flgc: its
    # learned balanced groups split uneven widths their own way, so near it)
    assert report["budget"]["achieved"] == pytest.approx(lines[-1]["budget_macs_achieved"],
                                                         rel=1e-9 if method == "lgc" else 0.03)
    assert report["budget"]["achieved"] <= 0.5


@pytest.mark.parametrize("name,target", [("resnet20", 0.3), ("user", 0.7),
                                         pytest.param("vgg16_bn", 0.5, marks=pytest.mark.slow),
                                         pytest.param("tv_resnet18", 0.7, marks=pytest.mark.slow)])
def test_trained_on_synthetic_data_the_export_meets_the_target(tiny_cfg, tmp_path, name, target):
    """The whole path: SSL on synthetic data, the budget's cut, training on thinner, then
    learnsparse-export's report."""
    cfg = tiny_cfg(*([] if name == "user" else [f"model={name}"]), "sparsity=[ssl_filter_channel,threshold]",
                   f"budget.macs={target}", "trainer.epochs=1")
    if name == "user":
        cfg.model = OmegaConf.create(USER_MODEL)
    train(cfg)
    report = export(tmp_path / "run" / "checkpoints" / "last.pt", formats=["pt"], measure=False, latency_rounds=2)
    assert 0.95 * target <= report["budget"]["achieved"] <= target
    assert report["budget"]["exported"] == report["macs_after"]
