"""Condensing in place during training: the swapped network trains exactly as the masked one
would, its optimizer state carried over; runs killed before or after the swap resume bit-exactly."""
from __future__ import annotations

import copy
import signal
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from learnsparse.engine.checkpoint_io import load_checkpoint
from learnsparse.models import create_model
from learnsparse.nn import FLGConv, LearnedGroupConv
from learnsparse.sparsity.condense_in_training import swap_in_training

from .cli_runner import run_cli
from .test_export_graph import _as_trained


def _fake_trainer(model, optimizer, shape):
    return SimpleNamespace(unwrapped_model=model, model=model, optimizer=optimizer, device=torch.device("cpu"),
                           memory_format=torch.contiguous_format, input_shape=list(shape))


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


@pytest.mark.parametrize("kind", ["lgc", "flgc", "flgc_balanced"])
@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_swapped_network_trains_exactly_as_the_masked_one(kind, optim):
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
    # Equal up to summation order, which three steps through BatchNorm in training mode
    # amplify to ~1e-4 of the output scale; a wrong slice of state or weights is ~1e-1.
    assert (a - b).abs().max() <= 1e-3 * a.abs().max(), (a - b).abs().max()


def test_a_swap_that_would_change_outputs_is_refused():
    model, shape = _structured("lgc", 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    layer = next(m for m in model.modules() if isinstance(m, LearnedGroupConv))
    from learnsparse.layer_types import layer_type
    from learnsparse.sparsity import condense_in_training

    entry = layer_type(layer)
    broken = entry.trainable_form

    def wrong(m):
        new = broken(m)
        new.conv.weight.data.mul_(1.5)
        return new

    object.__setattr__(entry, "trainable_form", wrong)
    try:
        with pytest.raises(condense_in_training.SwapMismatchError, match="differ"):
            swap_in_training(_fake_trainer(model, optimizer, shape),
                             [n for n, m in model.named_modules() if isinstance(m, LearnedGroupConv)], "test")
    finally:
        object.__setattr__(entry, "trainable_form", broken)


# 96 images, batch 32: 3 steps per epoch, 4 epochs. The last structure change (LGC's last
# stage, FLGC's freeze) comes at progress 0.5 = step 6, the first step of epoch 3 (index 2).
RUNS = {"lgc": ["model=condensenet_mini", "data.in_channels=1", "sparsity=condensenet",
                "sparsity.condensenet.condense_in_training=true"],
        "flgc": ["model=resnet20", "sparsity=flgc", "sparsity.flgc.groups=3"],
        "threshold": ["model=resnet20", "sparsity=threshold", "sparsity.threshold.rule=percentile",
                      "sparsity.threshold.tau=0.5"]}
SWAPS = ("condense_in_training", "shrink_in_training")


@pytest.mark.parametrize("kind", sorted(RUNS))
@pytest.mark.parametrize("kill_at,workers", [(4, 0), (10, 0), (10, 2)])
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


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_a_run_condensed_in_training_exports_exactly(kind, tmp_path):
    import json

    proc = run_cli(*RUNS[kind], "data.dataset.image_size=16", "trainer.epochs=4", "data.dataset.train_size=96",
                   f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert ckpt["record"]["edits"][-1]["op"] in SWAPS
    if kind == "threshold":  # about half the filters are gone, not just zero
        assert sum(v.numel() for k, v in ckpt["model"].items() if k.endswith("weight")) < 0.75 * 272_474
    for target in ("null", "onnxruntime"):
        export = run_cli(f"checkpoint={tmp_path}/run/checkpoints/last.pt", "latency_rounds=3", "latency_batch=4",
                         "formats=[pt,onnx]", f"target={target}", f"output_dir={tmp_path}/export_{target}",
                         tiny=False, entry="export_main")
        assert export.returncode == 0, export.stderr[-2000:]
        report = json.loads((tmp_path / f"export_{target}/report.json").read_text())
        assert report["exact"] and report["max_abs_diff"] <= 1e-5 * report["output_scale"]
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
        hook.trainer = _fake_trainer(m, opt, shape)
        hook.trainer.progress = 0.0
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
