"""The architecture record: any importable model, subclassed plugins and new layer types go
through train → resume → export → load without learnsparse knowing them by name."""
from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn as nn

from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.core.layer_types import register_layer_type
from learnsparse.export import condense_with_details, load
from learnsparse.export.artifacts import save_condensed

from .cli_runner import run_cli
from .test_cli_errors import assert_one_line_error

USER_PACKAGE = '''
import torch.nn as nn
from learnsparse.sparsity.flgc_schedule import FLGCSchedule


class TinyNet(nn.Module):
    """A model learnsparse has never heard of: only its _target_ names it."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.bn1(self.conv1(x)).relu()
        x = self.bn2(self.conv2(x)).relu()
        return self.head(x.mean((2, 3)))


class SlowFLGC(FLGCSchedule):
    """A subclassed plugin: the export must not need its class name."""
'''


@pytest.fixture
def user_project(tmp_path):
    package = tmp_path / "code" / "userpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(USER_PACKAGE)
    configs = tmp_path / "my_configs"
    (configs / "model").mkdir(parents=True)
    (configs / "sparsity").mkdir()
    (configs / "model" / "tiny.yaml").write_text(textwrap.dedent("""\
        _target_: userpkg.TinyNet
        num_classes: ${data.num_classes}
        in_channels: ${data.in_channels}
        width: 8
        """))
    (configs / "sparsity" / "slow_flgc.yaml").write_text(textwrap.dedent("""\
        slow_flgc:
          _target_: userpkg.SlowFLGC
          _partial_: true
          groups: 2
          include: [conv2]
          learn_fraction: 0.5
          log_images: false
        """))
    return tmp_path


def _run(project, *args, **kwargs):
    return run_cli(f"--config-dir={project / 'my_configs'}", "model=tiny", "sparsity=slow_flgc", "trainer.epochs=2",
                   *args, **kwargs)


def test_target_model_with_subclassed_plugin_trains_resumes_exports_and_loads(user_project, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{user_project / 'code'}:" + __import__("os").environ.get("PYTHONPATH", ""))
    straight = _run(user_project, f"hydra.run.dir={user_project}/straight")
    assert straight.returncode == 0, straight.stderr
    # Killed mid-run (after the assignments froze at step 4 of 8), then resumed.
    killed = _run(user_project, f"hydra.run.dir={user_project}/crash", "+callbacks.kill._target_=tests.helpers.KillAtStep",
                  "+callbacks.kill.step=6")
    assert killed.returncode != 0
    resumed = _run(user_project, f"hydra.run.dir={user_project}/crash", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(user_project / "straight/checkpoints/last.pt")
    b = load_checkpoint(user_project / "crash/checkpoints/last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    record = a["record"]
    assert record["model"]["_target_"] == "userpkg.TinyNet"
    # sparsify, then the in-training swap once the assignments froze
    assert [e["op"] for e in record["edits"]] == ["sparsify", "condense_in_training"]
    assert record["edits"][0]["method"] == "flgc"
    # conv2's learned structure: in the record's structure, or in the swap that consumed it
    assert set(record["structure"]) | set(record["edits"][1]["structure"]) == {"conv2"}

    # target=null: every learned layer sparse, whatever is faster for this tiny model.
    exported = run_cli(f"checkpoint={user_project}/straight/checkpoints/last.pt", "latency_rounds=2",
                       "latency_batch=2", "target=null", tiny=False, entry="export_main")
    assert exported.returncode == 0, exported.stderr
    assert "PermutedGroupConv" in exported.stdout  # the FLGC layer was converted, not left dense
    import sys

    sys.path.insert(0, str(user_project / "code"))
    try:
        from learnsparse.export import load_trained

        trained = load_trained(user_project / "straight/checkpoints/last.pt")
        deployed = load(user_project / "straight/export/condensed.pt")
        x = torch.randn(4, *trained.input_shape)
        with torch.no_grad():
            assert torch.allclose(trained(x), deployed(x), atol=1e-5, rtol=1e-4)
    finally:
        sys.path.remove(str(user_project / "code"))


# --- a layer type the package has never seen, registered here and nowhere else -------------

class MaskedConv(nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones(self.out_channels, self.in_channels, 1, 1))

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.mask, self.bias)


def _to_plain_conv(m: MaskedConv) -> nn.Conv2d:
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
    with torch.no_grad():
        conv.weight.copy_(m.weight * m.mask)
        conv.bias.copy_(m.bias)
    return conv


register_layer_type(MaskedConv, converter=_to_plain_conv, save_structure=lambda m: {"mask": m.mask},
                    restore_structure=lambda m, s: m.mask.copy_(s["mask"]))


def toy_net(width: int = 6) -> nn.Module:
    return nn.Sequential(MaskedConv(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         MaskedConv(width, width, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 4))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_new_layer_type_exports_and_reloads_end_to_end(tmp_path, seed):
    torch.manual_seed(seed)
    model = toy_net().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MaskedConv):
                m.mask.copy_((torch.rand_like(m.mask) > 0.5).float())
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(3, 3, 12, 12)
    result = condense_with_details(model, x)
    assert not any(isinstance(m, MaskedConv) for m in result.model.modules())
    save_condensed(tmp_path / "condensed.pt", result.model, {"_target_": "tests.test_record.toy_net"}, [3, 12, 12])
    rebuilt = load(tmp_path / "condensed.pt")
    with torch.no_grad():
        y = model(x)
        assert (rebuilt(x) - y).abs().max() <= 1e-5 * y.abs().max()


# --- defects the single record fixes ----------------------------------------------------------

@pytest.fixture(scope="module")
def condensenet_checkpoint(tmp_path_factory):
    from learnsparse import train
    from learnsparse.core.config_dir import compose

    from .conftest import TINY

    out = tmp_path_factory.mktemp("cn")
    metrics = train(compose([*TINY, "model=condensenet_mini", "data.in_channels=1", "trainer.epochs=1",
                             "sparsity=[condensenet,group_lasso]", "sparsity.condensenet.group_lasso=1e-4",
                             f"paths.output_dir={out}"]))
    return out / "checkpoints" / "last.pt", metrics


def test_two_regularizers_keep_their_own_loss_terms(condensenet_checkpoint):
    _, metrics = condensenet_checkpoint
    assert metrics["train_loss_reg_condensenet"] > 0 and metrics["train_loss_reg_group_lasso"] > 0


def test_two_hooks_claiming_one_loss_term_fail_at_start_naming_both(tmp_path):
    proc = run_cli("model=lenet5", "data.dataset.image_size=28", "+callbacks.a._target_=tests.helpers.FixedLossTerm",
                   "+callbacks.a.term=loss_reg_x", "+callbacks.b._target_=tests.helpers.FixedLossTerm",
                   "+callbacks.b.term=loss_reg_x", f"paths.log_dir={tmp_path}")
    assert_one_line_error(proc, "'loss_reg_x' is claimed by both a and b")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_classifier_keep_round_trips_through_condensed_pt(condensenet_checkpoint, tmp_path, keep):
    path, _ = condensenet_checkpoint
    proc = run_cli(f"checkpoint={path}", f"classifier_keep={keep}", f"output_dir={tmp_path}", "latency_rounds=2",
                   "latency_batch=2", tiny=False, entry="export_main")
    assert proc.returncode == 0, proc.stderr
    model = load(tmp_path / "condensed.pt")
    assert model(torch.zeros(2, *model.input_shape)).shape == (2, 10)


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    for bad in (["sparsity=group_lasso", "sparsity.group_lasso.mode=newton"],
                ["trainer.init_from=/no/such.pt"], ["+callbacks.x._target_=no.such.Hook"]):
        proc = run_cli("model=lenet5", "data.dataset.image_size=28", *bad, f"paths.log_dir={tmp_path}")
        assert_one_line_error(proc)
        assert not any(tmp_path.iterdir()), (bad, list(tmp_path.rglob("*")))


def test_preflight_checks_device_and_data_before_any_folder(tmp_path):
    import torch as _torch

    cases = [(["data=cifar10", f"data.root={tmp_path}/none", "model=resnet20"], "data.root=")]
    if not _torch.cuda.is_available():
        cases.append((["trainer.device=cuda"], "no CUDA device"))
    for args, fragment in cases:
        proc = run_cli(*args, f"paths.log_dir={tmp_path}/logs", tiny="data=cifar10" not in args)
        assert_one_line_error(proc, fragment)
        assert not (tmp_path / "logs").exists()


def test_flgconv_is_public():
    from learnsparse.layers import FLGConv

    assert FLGConv.__module__ == "learnsparse.layers.flgc_conv"


def _exported_record(tmp_path):
    """A CondenseNet and an FLGC network through `condense`: their records use every export op
    (convert, structure_passes, memory_format) and sparsify."""
    from learnsparse import sparsify
    from learnsparse.layers.end_state import at_end_state
    from learnsparse.models import create_model

    out = []
    for name, grouped in (("condensenet_mini", False), ("resnet20", True)):
        model = create_model(name, num_classes=10, in_channels=1 if name == "condensenet_mini" else 3)
        if grouped:
            sparsify(model, method="flgc", groups=2, include=["layer1.*"])
        at_end_state(model.eval(), seed=3)
        x = torch.randn(4, 1 if name == "condensenet_mini" else 3, 16, 16)
        deployed = condense_with_details(model, x, target="eager").model
        save_condensed(tmp_path / f"{name}.pt", deployed, {"_target_": "learnsparse.models.create_model",
                                                         "name": name, "num_classes": 10,
                                                         "in_channels": x.shape[1]}, list(x.shape[1:]))
        out.append((tmp_path / f"{name}.pt", deployed, x))
    return out


def test_records_written_before_edits_named_their_function_still_load(tmp_path):
    """A record of the older form (ops by name only), and one whose `redone_by` names a function
    that has since moved, rebuild the same deployed network through the built-in op table."""
    for path, deployed, x in _exported_record(tmp_path):
        blob = torch.load(path, weights_only=True)
        ops = {e["op"] for e in blob["record"]["edits"]}
        assert {"convert", "structure_passes", "memory_format"} <= ops
        for variant in ("older", "moved"):
            for e in blob["record"]["edits"]:
                if variant == "older":
                    e.pop("redone_by", None)
                else:
                    e["redone_by"] = "learnsparse.a_module_that_moved.redo"
            torch.save(blob, tmp_path / f"{variant}.pt")
            loaded = load(tmp_path / f"{variant}.pt")
            torch.testing.assert_close(loaded(x), deployed(x), rtol=0, atol=0)


def test_an_edit_must_name_a_function_rebuild_can_import():
    from learnsparse.core.record import declare_edit

    def local(model, edit):
        return None

    with pytest.raises(ValueError, match="module-level function"):
        declare_edit(nn.Linear(2, 2), "mine", local)
    with pytest.raises(ValueError, match="module-level function"):
        declare_edit(nn.Linear(2, 2), "mine", "no_such_package.redo")


def test_a_config_saved_before_a_plugin_moved_names_it_where_it_is():
    from learnsparse.core.plugins import with_current_targets
    from learnsparse.engine.resume import training_identity

    old = {"sparsity": {"flgc": {"_target_": "learnsparse.sparsity.flgc.FLGCSchedule", "groups": 4}}, "seed": 0}
    new = {"sparsity": {"flgc": {"_target_": "learnsparse.sparsity.flgc_schedule.FLGCSchedule", "groups": 4}},
           "seed": 0}
    assert with_current_targets(old) == new
    assert training_identity(old) == training_identity(new)  # resume=auto finds the run begun before
