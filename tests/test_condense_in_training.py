"""Condensing in place during training: the swapped network trains exactly as the masked one
would, its optimizer state carried over; runs killed before or after the swap resume bit-exactly."""
from __future__ import annotations

import copy
import signal
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.engine.surgery import SurgeryMismatchError
from learnsparse.layers import FLGConv, LearnedGroupConv
from learnsparse.models import create_model
from learnsparse.sparsity.condense_in_training import choose_before_training, swap_in_training

from .cli_runner import run_cli
from .helpers import resnet_cifar_params
from .test_export_graph import _as_trained
from .test_surgery import bare_trainer


def _fake_trainer(model, optimizer, shape):
    return bare_trainer(model, optimizer, shape)


def _steps(model, optimizer, batches):
    model.train()
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _structured(kind: str, seed: int):
    torch.manual_seed(seed)
    if kind == "lgc":
        model = create_model("condensenet_mini", num_classes=10, in_channels=1)
        shape = (1, 16, 16)
    else:
        from learnsparse import sparsify

        model = create_model("resnet20", num_classes=10, in_channels=3)
        sparsify(model, "flgc", groups=3, balanced=kind == "flgc_balanced")
        shape = (3, 16, 16)
    model = _as_trained(model, seed).train()
    return model, shape


@pytest.fixture
def float64():
    # In float32, three training steps through BatchNorm (batch 8) amplify the different
    # summation order of the two forms to 1e-4..3e-3 of the output scale, depending on the CPU's
    # kernels; in float64 it stays far below 1e-6, so a wrong slice (~1e-1) cannot hide in it.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("kind", ["lgc", "flgc", "flgc_balanced"])
@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_swapped_network_trains_exactly_as_the_masked_one(kind, optim, float64):
    model, shape = _structured(kind, 0)
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
            "adam": lambda p: torch.optim.Adam(p, lr=1e-3)}[optim]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make(params)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, *shape, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(6)]
    _steps(model, optimizer, batches[:3])  # optimizer state to carry over

    masked, masked_opt = model, optimizer
    swapped = copy.deepcopy(model)
    swapped_opt = make([p for p in swapped.parameters() if p.requires_grad])
    swapped_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # its own buffers, not shared
    names = [n for n, m in swapped.named_modules() if isinstance(m, (LearnedGroupConv, FLGConv))]
    done = swap_in_training(_fake_trainer(swapped, swapped_opt, shape), names, "test")
    # Every layer swaps, except an FLGC layer with a group of filters and no inputs (only a
    # padded conv computes those, and training would fill its padding): it stays masked.
    kept = [n for n in names if n not in done]
    assert len(done) >= len(names) - 1 and all(kind.startswith("flgc") for _ in kept)
    assert all(isinstance(swapped.get_submodule(n), (LearnedGroupConv, FLGConv)) for n in kept)
    assert not any(isinstance(swapped.get_submodule(n), (LearnedGroupConv, FLGConv)) for n in done)
    # The optimizer holds exactly the new model's trainable parameters, in the model's order.
    assert [id(p) for p in swapped_opt.param_groups[0]["params"]] == \
        [id(p) for p in swapped.parameters() if p.requires_grad]
    state_keys = {"sgd": "momentum_buffer", "adam": "exp_avg_sq"}[optim]
    assert all(state_keys in swapped_opt.state[p] for p in swapped.parameters() if p.requires_grad)

    _steps(masked, masked_opt, batches[3:])
    _steps(swapped, swapped_opt, batches[3:])
    x = torch.randn(4, *shape, generator=g)
    with torch.no_grad():
        a, b = masked.eval()(x), swapped.eval()(x)
    assert a.dtype == torch.float64
    # Equal up to summation order (float64); a wrong slice of state or weights is ~1e-1.
    assert (a - b).abs().max() <= 1e-6 * a.abs().max(), (a - b).abs().max()


def test_a_swap_that_would_change_outputs_is_refused():
    model, shape = _structured("lgc", 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    layer = next(m for m in model.modules() if isinstance(m, LearnedGroupConv))
    from learnsparse.core.layer_types import layer_type

    entry = layer_type(layer)
    broken = entry.trainable_converter

    def wrong(m):
        new = broken(m)
        new.conv.weight.data.mul_(1.5)
        return new

    object.__setattr__(entry, "trainable_converter", wrong)
    before = [type(m) for m in model.modules()]
    params = [id(p) for p in optimizer.param_groups[0]["params"]]
    try:
        with pytest.raises(SurgeryMismatchError, match="differ"):
            swap_in_training(_fake_trainer(model, optimizer, shape),
                             [n for n, m in model.named_modules() if isinstance(m, LearnedGroupConv)], "test")
    finally:
        object.__setattr__(entry, "trainable_converter", broken)
    # Refused, the model is put back as it was: the same layers, the optimizer untouched.
    assert [type(m) for m in model.modules()] == before
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == params == [id(p) for p in model.parameters()]


# 96 images, batch 32: 3 steps per epoch, 4 epochs. The last structure change (LGC's last
# stage, FLGC's freeze) comes at progress 0.5 = step 6, the first step of epoch 3 (index 2).
RUNS = {"lgc": ["model=condensenet_mini", "data.in_channels=1", "sparsity=condensenet"],  # its defaults
        "flgc": ["model=resnet20", "sparsity=flgc", "sparsity.flgc.groups=3"],
        "threshold": ["model=resnet20", "sparsity=threshold", "sparsity.threshold.rule=percentile",
                      "sparsity.threshold.tau=0.5"]}
SWAPS = ("condense_in_training", "shrink_in_training")


# make test keeps LGC's kill after the swap with 2 workers; before the swap, without workers, and
# FLGC's and threshold's are covered for the defaults by test_resume's random-step kills, and
# run here under -m slow.
@pytest.mark.parametrize("kind,kill_at,workers", [
    (kind, kill_at, workers) if (kind, kill_at, workers) == ("lgc", 10, 2)
    else pytest.param(kind, kill_at, workers, marks=pytest.mark.slow)
    for kind in sorted(RUNS) for kill_at, workers in [(4, 0), (10, 0), (10, 2)]])
def test_killed_before_or_after_the_swap_resumes_bit_exactly(kind, kill_at, workers, tmp_path):
    common = [*RUNS[kind], "data.dataset.image_size=16", "trainer.epochs=4", "data.dataset.train_size=96",
              f"data.num_workers={workers}", f"paths.log_dir={tmp_path}"]
    full = run_cli(*common, f"hydra.run.dir={tmp_path}/full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run_cli(*common, f"hydra.run.dir={tmp_path}/crash", "+callbacks.kill._target_=tests.helpers.KillAtStep",
                     f"+callbacks.kill.step={kill_at}")
    assert killed.returncode == -signal.SIGKILL
    edits = load_checkpoint(tmp_path / "crash/checkpoints/last.pt")["record"]["edits"]
    assert any(e["op"] in SWAPS for e in edits) == (kill_at > 6)
    resumed = run_cli(*common, f"hydra.run.dir={tmp_path}/crash", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "crash/checkpoints/last.pt")
    assert a["iter"] == b["iter"] == 12
    assert [(e["op"], e.get("layers")) for e in a["record"]["edits"]] == \
        [(e["op"], e.get("layers")) for e in b["record"]["edits"]]
    assert a["record"]["edits"][-1]["op"] in SWAPS
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert len(a["optimizer"]["state"]) == len(b["optimizer"]["state"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


# threshold's ResNet-20 run is under -m slow: test_budget's whole-path test trains thinner in
# training and exports it in make test. FLGC's too: LGC's run covers the swap-then-export path,
# and FLGC's deployed forms export exactly by both routes in test_export_graph.
@pytest.mark.parametrize("kind", [k if k == "lgc" else pytest.param(k, marks=pytest.mark.slow)
                                  for k in sorted(RUNS)])
def test_a_run_condensed_in_training_exports_exactly(kind, tmp_path):
    import json

    proc = run_cli(*RUNS[kind], "data.dataset.image_size=16", "trainer.epochs=4", "data.dataset.train_size=96",
                   f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert ckpt["record"]["edits"][-1]["op"] in SWAPS
    if kind == "threshold":  # about half the filters are gone, not just zero
        assert sum(v.numel() for k, v in ckpt["model"].items() if k.endswith("weight")) < 0.75 * resnet_cifar_params(depth=20, num_classes=10)
    for target in ("null", "onnxruntime"):
        export = run_cli(f"checkpoint={tmp_path}/run/checkpoints/last.pt", "latency_rounds=3", "latency_batch=4",
                         "formats=[pt,onnx]", f"target={target}", f"output_dir={tmp_path}/export_{target}",
                         tiny=False, entry="export_main")
        assert export.returncode == 0, export.stderr[-2000:]
        report = json.loads((tmp_path / f"export_{target}/report.json").read_text())
        assert report["exact"] and report["max_abs_diff"] <= 1e-5 * report["output_scale"]
        if kind != "threshold":  # the baseline is the dense network, not the one training condensed
            assert report["params_dense"] > report["params_before"] and report["macs_dense"] > report["macs_before"]
        if kind == "lgc" and target == "null":  # the deployed dense blocks, as from a masked run
            assert "CondensedDenseBlock" in export.stdout


def test_shrunk_network_trains_exactly_as_the_masked_one():
    from learnsparse.sparsity.threshold_freeze import ThresholdFreeze

    torch.manual_seed(0)
    model = _as_trained(create_model("resnet20", num_classes=10, in_channels=3), 0).train()
    shape = (3, 16, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, *shape, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(6)]
    _steps(model, optimizer, batches[:2])

    def frozen_copy(shrink: bool):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        hook = ThresholdFreeze(m, at=0.0, tau=0.5, rule="percentile", shrink_in_training=shrink)
        hook.keep_alive = bare_trainer(m, opt, shape, hooks=[hook])  # the hook holds a weak proxy
        hook.freeze()
        return m, opt, hook

    masked, masked_opt, masked_hook = frozen_copy(False)
    thin, thin_opt, thin_hook = frozen_copy(True)
    assert sum(p.numel() for p in thin.parameters()) < 0.75 * sum(p.numel() for p in masked.parameters())
    for m, opt, hook in ((masked, masked_opt, masked_hook), (thin, thin_opt, thin_hook)):
        m.train()
        for x, y in batches[2:]:  # the trainer's step, with the hook's masking points
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            hook.after_backward()
            opt.step()
            hook.after_step()
    x = torch.randn(4, *shape, generator=g)
    with torch.no_grad():
        a, b = masked.eval()(x), thin.eval()(x)
    assert (a - b).abs().max() <= 1e-3 * a.abs().max(), (a - b).abs().max()


def test_measured_choice_swaps_only_the_layers_that_train_faster_deployed(monkeypatch):
    from learnsparse.core.record import edits_of
    from learnsparse.sparsity import trainable_forms
    from learnsparse.sparsity.condense_in_training import redo_swap

    model, shape = _structured("lgc", 0)
    before = copy.deepcopy(model)
    names = [n for n, m in model.named_modules() if isinstance(m, LearnedGroupConv)]
    slow_deployed = names[0]
    seen_shapes = []

    def fake_ms(forms, x, amp_dtype=None, rounds=9):  # the first layer trains faster masked
        seen_shapes.append(tuple(x.shape))
        layer = forms[trainable_forms.MASKED]
        first = layer is not None and layer.in_channels == before.get_submodule(slow_deployed).in_channels
        return {trainable_forms.MASKED: 1.0, trainable_forms.DEPLOYED: 2.0 if first else 0.5}

    monkeypatch.setattr(trainable_forms, "training_step_ms", fake_ms)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = _fake_trainer(model, optimizer, shape)
    trainer.train_loader = SimpleNamespace(batch_size=12)
    forms = choose_before_training(trainer, names, lambda m: None, "measure")
    done = swap_in_training(trainer, names, "test", forms=forms)
    # Timed on one training batch's worth of each layer's real input.
    assert len(seen_shapes) == len(names) and all(s[0] == 12 for s in seen_shapes)
    assert isinstance(model.get_submodule(slow_deployed), LearnedGroupConv) and slow_deployed not in done
    assert set(done) == set(names[1:]) and len(done) > 0
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    # The record keeps the choice and replays it: no timing on rebuild.
    edit = edits_of(model)[-1]
    assert edit["forms"][slow_deployed]["form"] == trainable_forms.MASKED
    monkeypatch.setattr(trainable_forms, "training_step_ms", None)
    redo_swap(before, edit)
    assert [type(m) for m in before.modules()] == [type(m) for m in model.modules()]
    before.load_state_dict(model.state_dict())


def test_the_default_rule_reads_only_shapes(monkeypatch):
    """`rule`: deployed exactly where a layer's input has at most RULE_MAX_PIXELS pixels; no
    timing happens, so load cannot change it."""
    from learnsparse.sparsity import trainable_forms
    from learnsparse.sparsity.condensing import CondensingSchedule

    def no_timing(*args, **kwargs):
        raise AssertionError("the rule must not time anything")

    monkeypatch.setattr(trainable_forms, "training_step_ms", no_timing)
    model, shape = _structured("lgc", 0)
    assert CondensingSchedule(model).trainable_form == trainable_forms.RULE  # the default
    names = [n for n, m in model.named_modules() if isinstance(m, LearnedGroupConv)]
    # At 32x32 the mini network's blocks see 32x32, 16x16 and 8x8 maps.
    trainer = _fake_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (shape[0], 32, 32))
    forms = choose_before_training(trainer, names, lambda m: None, trainable_forms.RULE)
    assert set(forms) == set(names)
    for name, choice in forms.items():
        h, w = choice["input"][1:]
        assert choice["form"] == (trainable_forms.DEPLOYED if h * w <= trainable_forms.RULE_MAX_PIXELS
                                  else trainable_forms.MASKED), name
    assert {c["form"] for c in forms.values()} == {trainable_forms.DEPLOYED, trainable_forms.MASKED}
    assert choose_before_training(trainer, names, lambda m: None, trainable_forms.RULE) == forms


def test_a_layer_swaps_only_when_its_deployed_form_is_clearly_faster():
    from learnsparse.sparsity.trainable_forms import DEPLOYED, MASKED, SWAP_MARGIN, faster_form

    assert faster_form({MASKED: 10.0, DEPLOYED: 6.0}) == DEPLOYED
    assert faster_form({MASKED: 6.0, DEPLOYED: 10.0}) == MASKED
    # Within the margin, timing noise would decide: the layer stays as it is.
    assert faster_form({MASKED: 10.0, DEPLOYED: 10.0 / SWAP_MARGIN + 1e-3}) == MASKED
    assert faster_form({MASKED: 10.0, DEPLOYED: 10.0 / SWAP_MARGIN - 1e-3}) == DEPLOYED


def test_timing_the_forms_leaves_the_training_untouched():
    from learnsparse.sparsity.condense_in_training import trainable_deployed
    from learnsparse.sparsity.trainable_forms import DEPLOYED, MASKED, choose_forms, faster_form

    model, shape = _structured("lgc", 0)
    names = [n for n, m in model.named_modules() if isinstance(m, LearnedGroupConv)][:2]
    forms = {n: trainable_deployed(model.get_submodule(n)) for n in names}
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(6, *shape)
    rng = torch.get_rng_state()
    chosen = choose_forms(model, forms, lambda: x, "measure", rounds=3)
    for name in names:
        ms = chosen[name]["ms"]
        assert set(ms) == {MASKED, DEPLOYED} and all(v > 0 for v in ms.values())
        assert chosen[name]["form"] == faster_form(ms)
    assert torch.equal(torch.get_rng_state(), rng)  # the training's random stream is not consumed
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # nor BatchNorm statistics
    assert choose_forms(model, forms, lambda: x, DEPLOYED) == {n: {"form": DEPLOYED} for n in names}
    with pytest.raises(ValueError, match="trainable_form must be one of"):
        from learnsparse.sparsity.condensing import CondensingSchedule

        CondensingSchedule(model, trainable_form="fastest")


def test_a_run_with_measured_forms_records_its_choice_and_resumes_on_it(tmp_path):
    common = [*RUNS["lgc"], "sparsity.condensenet.trainable_form=measure", "data.dataset.image_size=16",
              "data.dataset.train_size=96", f"hydra.run.dir={tmp_path}/run",
              # The timing finds every layer faster deployed, whatever the load on this machine.
              "+callbacks.timing._target_=tests.helpers.DeployedTrainsFaster"]
    # Killed before the swap (step 6): the choice was made before the first step and is in the
    # epoch-1 checkpoint, so the resumed run swaps what the killed one chose, timing nothing again.
    killed = run_cli(*common, "trainer.epochs=4", "+callbacks.kill._target_=tests.helpers.KillAtStep",
                     "+callbacks.kill.step=4")
    assert killed.returncode == -signal.SIGKILL
    assert "will train deployed" in killed.stderr + killed.stdout  # timed, before the first step
    chosen = load_checkpoint(tmp_path / "run/checkpoints/last.pt")["hooks"]["condensenet"]["forms"]
    assert chosen and all(set(c["ms"]) == {"masked", "deployed"} for c in chosen.values())
    assert all(c["form"] == "deployed" for c in chosen.values())
    first = run_cli(*common, "trainer.epochs=4", "trainer.resume=auto")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "will train deployed" not in first.stderr + first.stdout  # not timed again
    edit = load_checkpoint(tmp_path / "run/checkpoints/last.pt")["record"]["edits"][-1]
    assert edit["forms"] == chosen
    assert edit["op"] == "condense_in_training"
    assert sorted(edit["layers"]) == sorted(chosen)
    longer = run_cli(*common, "trainer.epochs=5", "trainer.resume=auto")
    assert longer.returncode == 0, longer.stderr[-2000:]
    again = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    replayed = again["record"]["edits"][-1]  # replayed from the record, not timed again
    assert again["epoch"] == 4 and (replayed["layers"], replayed["forms"]) == (edit["layers"], edit["forms"])
