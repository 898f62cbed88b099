"""Model surgery: every change of the model during training goes through one path
(learnsparse/engine/surgery.py), which leaves the model in the mode it found, carries the
optimizer state, and tells every hook, so nothing trains on with stale references."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn

from learnsparse import sparsify, train
from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.core.record import edits_of
from learnsparse.engine import HookBase, Trainer
from learnsparse.layers import FLGConv, LearnedGroupConv
from learnsparse.models import create_model
from learnsparse.sparsity.condense_in_training import swap_in_training
from learnsparse.sparsity.regularizers import GroupPenalty
from learnsparse.sparsity.report import SparsityReport
from learnsparse.sparsity.threshold_freeze import ThresholdFreeze


def bare_trainer(model, optimizer, shape, batch: int = 4, memory_format=torch.contiguous_format, hooks=()):
    """A real Trainer around `model` for calling its surgery directly (no data: a loader of one
    empty step)."""
    trainer = Trainer(model, optimizer, [None], epochs=1, device=torch.device("cpu"),
                      channels_last=memory_format is torch.channels_last)
    trainer.input_shape = list(shape)
    trainer.register_hooks(list(hooks))
    return trainer


class CheckLive(HookBase):
    """After every step: the model trains in train mode, and every hook that holds parameters
    or modules holds the model's own (penalty terms, report layers, threshold masks)."""
    changes: list[int] = []

    def on_model_changed(self, mapping):
        CheckLive.changes.append(self.trainer.iter)

    def after_step(self):
        t = self.trainer
        model = t.unwrapped_model
        assert model.training and t.model.training, f"step {t.iter}: the model trains in eval mode"
        live = {id(p) for p in model.parameters()}
        modules = {id(m) for m in model.modules()}
        for h in t.hooks:
            if isinstance(h, GroupPenalty):
                assert all(id(w) in live for _, w, _ in h.terms), f"step {t.iter}: {h.state_key} holds dead weights"
            if isinstance(h, SparsityReport):
                assert all(id(m) in modules for _, m in h.layers), f"step {t.iter}: the report holds dead layers"
            if isinstance(h, ThresholdFreeze):
                assert all(id(p) in live for p, _ in h._parameters()), f"step {t.iter}: dead masked parameters"
        opt = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
        assert opt == {id(p) for p in model.parameters() if p.requires_grad}


CHECK = ["+callbacks.check._target_=tests.test_surgery.CheckLive"]
README = ["model=resnet20", "sparsity=[ssl_filter_channel,threshold]"]  # with their defaults (until 1.0, shrink on)


def _history(tmp_path):
    return [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_the_readme_command_trains_to_the_end_after_the_shrink(tiny_cfg, tmp_path):
    """The README's `'sparsity=[ssl_filter_channel,threshold]'` on synthetic data (the issue's
    repro): the shrink's dependency graph once left the model in eval mode, and the run ended
    in NaN two steps later."""
    CheckLive.changes = []
    metrics = train(tiny_cfg(*README, "trainer.epochs=4", "sparsity.threshold.rule=relative",
                             "sparsity.threshold.tau=5e-2", *CHECK))
    lines = _history(tmp_path)
    assert len(lines) == 4 and metrics["epoch"] == 3
    assert all(math.isfinite(line["train_loss_total"]) for line in lines)


def test_after_the_shrink_penalties_and_report_follow_the_thinner_model(tiny_cfg, tmp_path):
    CheckLive.changes = []
    train(tiny_cfg(*README, "trainer.epochs=2", "sparsity.threshold.rule=percentile",
                   "sparsity.threshold.tau=0.3", *CHECK))
    assert CheckLive.changes == [4]  # 4 steps an epoch: the shrink at progress 0.5, told to every hook
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert ckpt["record"]["edits"][-1]["op"] == "shrink_in_training"
    weights = {k.removesuffix(".weight"): list(v.shape) for k, v in ckpt["model"].items() if k.endswith(".weight")}
    rows = _history(tmp_path)[-1]["sparsity_layers"]
    assert rows and all(rows[name]["shape"] == weights[name] for name in rows)  # the thinned shapes
    assert sum(r["weights"] for r in rows.values()) < 0.9 * 272_474


REGULARIZERS = ["l1", "group_lasso", "ssl_filter_channel", "ssl_shape", "ssl_depth", "bn_slimming"]
# 64 images, batch 32: 2 steps an epoch, 2 epochs; each structure is final at progress 0.5 (step 2).
CHANGES = {"threshold": ["sparsity.threshold.rule=percentile", "sparsity.threshold.tau=0.3"],
           "flgc": ["sparsity.flgc.groups=2"], "lgc": []}
OPS = {"threshold": "shrink_in_training", "flgc": "condense_in_training", "lgc": "condense_in_training"}


# The swaps' half of the matrix is slow (12 runs); the shrink's, where the NaN was, runs always.
@pytest.mark.parametrize("change", ["threshold", pytest.param("flgc", marks=pytest.mark.slow),
                                    pytest.param("lgc", marks=pytest.mark.slow)])
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_every_regularizer_trains_on_through_every_surgery(regularizer, change, tiny_cfg, tmp_path):
    CheckLive.changes = []
    train(tiny_cfg("model=resnet20", f"sparsity=[{regularizer},{change}]", "trainer.epochs=2",
                   "data.dataset.train_size=64", *CHANGES[change], *CHECK))
    assert CheckLive.changes == [2]
    ops = [e["op"] for e in load_checkpoint(tmp_path / "run/checkpoints/last.pt")["record"]["edits"]]
    assert ops[-1] == OPS[change]
    assert all(math.isfinite(line["train_loss_total"]) for line in _history(tmp_path))


# ---- every surgery leaves the model in the mode it found it ---------------------------------
def _found(model: nn.Module, how: str) -> None:
    """Put the model in a mode: all train, all eval, or mixed (some BatchNorms in eval, the
    classifier's weight frozen, as a user fine-tuning with frozen statistics might)."""
    model.train(how != "eval")
    if how == "mixed":
        for i, m in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            if i % 2 == 0:
                m.eval()
        [m for m in model.modules() if isinstance(m, nn.Linear)][-1].weight.requires_grad_(False)


def _modes(model: nn.Module) -> tuple[dict, dict]:
    return ({n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()})


def _assert_as_found(model: nn.Module, found: tuple[dict, dict], channels_last: bool) -> None:
    training, grads = found
    for name, m in model.named_modules():
        # A new module takes the mode of the one it replaced (its nearest ancestor that existed).
        ancestor = next(a for a in (name, *_ancestors(name)) if a in training)
        assert m.training == training[ancestor], f"{name}: training={m.training}"
    for name, p in model.named_parameters():
        if name in grads:
            assert p.requires_grad == grads[name], name
        if channels_last and p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last), name


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]


def _lgc_model():
    from .test_export_graph import _as_trained

    torch.manual_seed(0)
    return _as_trained(create_model("condensenet_mini", num_classes=10, in_channels=1), 0), (1, 16, 16)


def _flgc_model():
    from .test_export_graph import _as_trained

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=3)
    sparsify(model, "flgc", groups=2)
    return _as_trained(model, 0), (3, 16, 16)


def _resnet():
    from .test_export_graph import _as_trained

    torch.manual_seed(0)
    return _as_trained(create_model("resnet20", num_classes=10, in_channels=3), 0), (3, 16, 16)


def _swap(kind):
    def run(trainer):
        model = trainer.unwrapped_model
        layer = LearnedGroupConv if kind == "lgc" else FLGConv
        names = [n for n, m in model.named_modules() if isinstance(m, layer)]
        assert swap_in_training(trainer, names, kind)
    return run


def _shrink(trainer):
    hook = next(h for h in trainer.hooks if isinstance(h, ThresholdFreeze))
    hook.freeze()
    assert any(e["op"] == "shrink_in_training" for e in edits_of(trainer.unwrapped_model))


def _user_edit(trainer):
    """A user's own change through the public method: a conv for an equal one, built by a
    library call that (like Torch-Pruning's graph) leaves what it built in eval mode."""
    model = trainer.unwrapped_model
    name = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n.startswith("layer1"))
    new = copy.deepcopy(model.get_submodule(name)).eval().requires_grad_(True)
    trainer.replace_modules({name: new})


SURGERIES = {"lgc_swap": (_lgc_model, _swap("lgc")), "flgc_swap": (_flgc_model, _swap("flgc")),
             "threshold_shrink": (_resnet, _shrink), "replace_modules": (_resnet, _user_edit)}


@pytest.mark.parametrize("how", ["train", "eval", "mixed"])
@pytest.mark.parametrize("surgery", sorted(SURGERIES))
def test_every_surgery_leaves_the_model_in_the_mode_it_found(surgery, how):
    build, change = SURGERIES[surgery]
    model, shape = build()
    channels_last = how == "mixed"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    _found(model, how)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    hooks = [ThresholdFreeze(model, at=0.0, tau=0.5, rule="percentile")] if surgery == "threshold_shrink" else []
    trainer = bare_trainer(model, optimizer, shape, memory_format=torch.channels_last if channels_last
                           else torch.contiguous_format, hooks=hooks)
    found = _modes(model)
    change(trainer)
    assert trainer.unwrapped_model is model  # the root stays the object the caller holds
    _assert_as_found(model, found, channels_last)
    # The optimizer holds exactly the trainable parameters, in the model's order.
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == \
        [id(p) for p in model.parameters() if p.requires_grad]
