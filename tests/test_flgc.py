"""FLGC: balanced assignment, the straight-through layer, sparsify, schedule and export."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from learnsparse import train
from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.export import condense_with_details
from learnsparse.layers.flgc_conv import FLGConv
from learnsparse.layers.group_assignment import balanced_assignment
from learnsparse.layers.permuted_group_conv import PermutedGroupConv, choose_layout
from learnsparse.models import create_model
from learnsparse.sparsity.learned_grouping import sparsify


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), groups=st.integers(1, 9), seed=st.integers(0, 9999))
def test_balanced_assignment_fills_every_group_evenly(n, groups, seed):
    groups = min(groups, n)
    scores = torch.randn(n, groups, generator=torch.Generator().manual_seed(seed))
    sizes = torch.bincount(balanced_assignment(scores), minlength=groups)
    assert sizes.sum() == n and int(sizes.max() - sizes.min()) <= 1


def test_balanced_assignment_keeps_an_already_balanced_argmax():
    scores = torch.eye(4).repeat(3, 1) + 0.01 * torch.randn(12, 4)
    assert torch.equal(balanced_assignment(scores), scores.argmax(1))


def _random_flgc(cin, cout, k, groups, balanced, seed, bias=False):
    torch.manual_seed(seed)
    layer = FLGConv(cin, cout, k, padding=k // 2, groups=groups, balanced=balanced, bias=bias)
    with torch.no_grad():
        layer.in_logits.normal_(0, 3)  # a random assignment, uneven unless balanced
        layer.out_logits.normal_(0, 3)
    return layer


def test_forward_is_the_conv_with_the_hard_connection_mask():
    layer = _random_flgc(6, 10, 3, 3, False, 0)
    in_group, out_group = layer.assignments()
    mask = layer.connection_mask()
    assert torch.equal(mask, (out_group[:, None] == in_group[None, :]).float())  # exactly 0/1
    x = torch.randn(2, 6, 7, 7)
    ref = nn.functional.conv2d(x, layer.weight * mask[:, :, None, None], padding=1)
    assert torch.allclose(layer(x), ref, atol=1e-6)


def test_assignments_receive_gradient_until_frozen():
    layer = _random_flgc(8, 8, 1, 4, False, 1)
    layer(torch.randn(4, 8, 5, 5)).square().mean().backward()
    assert layer.in_logits.grad.abs().sum() > 0 and layer.out_logits.grad.abs().sum() > 0
    before = [t.clone() for t in layer.assignments()]
    layer.freeze()
    with torch.no_grad():
        layer.in_logits.normal_(0, 5)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.assignments()))
    assert not layer.in_logits.requires_grad


@settings(max_examples=40, deadline=None)
@given(cin=st.integers(8, 20), cout=st.integers(8, 20), k=st.sampled_from([1, 3]), groups=st.sampled_from([2, 3, 4, 8]),
       balanced=st.booleans(), bias=st.booleans(), seed=st.integers(0, 9999))
def test_export_equals_the_trained_layer(cin, cout, k, groups, balanced, bias, seed):
    layer = _random_flgc(cin, cout, k, groups, balanced, seed, bias).eval()
    model = nn.Sequential(layer, nn.ReLU())
    x = torch.randn(3, cin, 6, 6, generator=torch.Generator().manual_seed(seed))
    result = condense_with_details(model, x)
    deployed = result.model[0]
    in_group, out_group = layer.assignments()
    assert isinstance(deployed, PermutedGroupConv)
    assert deployed.layout == choose_layout(in_group, out_group, groups)
    if balanced and cin % groups == 0 and cout % groups == 0:
        assert deployed.layout == "padded" and deployed.conv.groups == groups
        assert deployed.conv.in_channels == cin and deployed.conv.out_channels == cout  # no padding waste
    with torch.no_grad():
        a, b = model(x), result.model(x)
    assert (a - b).abs().max() <= 1e-5 * max(1.0, float(a.abs().max()))


@settings(max_examples=30, deadline=None)
@given(cin=st.integers(4, 20), cout=st.integers(4, 20), k=st.sampled_from([1, 3]), groups=st.sampled_from([2, 3, 4, 8]),
       layout=st.sampled_from(["padded", "split"]), bias=st.booleans(), seed=st.integers(0, 9999))
def test_both_layouts_compute_the_masked_conv(cin, cout, k, groups, layout, bias, seed):
    assume(groups <= min(cin, cout))
    layer = _random_flgc(cin, cout, k, groups, False, seed, bias).eval()
    in_group, out_group = layer.assignments()
    in_sizes = torch.bincount(in_group, minlength=groups)
    out_sizes = torch.bincount(out_group, minlength=groups)
    assume(layout == "padded" or not bool(((in_sizes == 0) & (out_sizes > 0)).any()))
    deployed = PermutedGroupConv.from_assignment(layer.weight, layer.bias, in_group, out_group, groups,
                                                 layer.stride, layer.padding, layout=layout)
    x = torch.randn(2, cin, 7, 7, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a, b = layer(x), deployed(x)
    assert (a - b).abs().max() <= 1e-5 * max(1.0, float(a.abs().max()))
    computed = sum(c.weight[:, :, 0, 0].numel() for c in deployed.modules() if isinstance(c, nn.Conv2d))
    if layout == "split":  # exactly the kept connections
        assert computed == int((in_sizes * out_sizes).sum())
    else:  # every group padded to the largest
        assert computed == groups * int(in_sizes.max()) * int(out_sizes.max())


def test_sparsify_replaces_matching_convs_and_keeps_their_weights():
    torch.manual_seed(0)
    model = create_model("tv_resnet18", num_classes=10, in_channels=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    report = sparsify(model, "flgc", groups=1, include=["layer*.conv*"])
    assert len(report["replaced"]) == 16
    assert sum(isinstance(m, FLGConv) for m in model.modules()) == 16
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)  # one group: the same function
    mb = create_model("tv_mobilenet_v2", num_classes=10, in_channels=3)
    report = sparsify(mb, "lgc", groups=4, condense_factor=4)
    assert report["replaced"] and any("already grouped" in s for s in report["skipped"])  # depthwise convs stay
    with pytest.raises(ValueError, match="no conv matches"):
        sparsify(create_model("lenet5", num_classes=10, in_channels=1), "flgc", include=["nothing*"])


def test_flgc_run_learns_assignments_then_freezes_and_exports(tiny_cfg, tmp_path):
    train(tiny_cfg("model=resnet20", "data.dataset.image_size=16", "sparsity=flgc", "sparsity.flgc.groups=3",
                   "sparsity.flgc.condense_in_training=false",
                   "sparsity.flgc.include=[layer*.conv*]", "sparsity.flgc.learn_fraction=0.5",
                   "sparsity.flgc.temperature_end=0.3", "optim.lr=0.5", "trainer.epochs=2"))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["flgc_assignments_changed_pct"] > 0  # assignments move while they learn
    assert lines[-1]["flgc_frozen"] == 1 and lines[-1]["flgc_assignments_changed_pct"] == 0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    model = create_model("resnet20", num_classes=10, in_channels=3)
    sparsify(model, "flgc", groups=3, include=["layer*.conv*"])
    model.load_state_dict(ckpt["model"])
    assert all(bool(m.frozen) for m in model.modules() if isinstance(m, FLGConv))
    result = condense_with_details(model.eval(), torch.randn(2, 3, 16, 16))
    assert sum(isinstance(m, PermutedGroupConv) for m in result.model.modules()) == 18

    # learnsparse-export replays sparsify from the run's config; condensed.pt rebuilds the same
    # layouts, folded permutations and BatchNorms, and computes what the trained model does.
    from omegaconf import OmegaConf

    from learnsparse.export import load
    from learnsparse.export.from_checkpoint import export_checkpoint

    export_checkpoint(OmegaConf.create({
        "checkpoint": str(tmp_path / "run" / "checkpoints" / "last.pt"), "formats": ["pt"], "output_dir": None,
        "classifier_keep": None, "channels_last": True, "rtol": 1e-5, "verify_batch": 4, "latency_batch": 2,
        "latency_rounds": 1, "threads": None}))
    deployed = load(tmp_path / "run" / "export" / "condensed.pt")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        assert (deployed(x) - expected).abs().max() <= 1e-5 * expected.abs().max()


class _Chain(nn.Module):
    def __init__(self, balanced):
        super().__init__()
        self.a = _random_flgc(8, 12, 3, 4, balanced, 1)
        self.bn_a = nn.BatchNorm2d(12)
        self.b = _random_flgc(12, 12, 1, 3, balanced, 2)
        self.bn_b = nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(x)))
        x = nn.functional.relu(self.bn_b(self.b(x)))
        return self.head(x)


@pytest.mark.parametrize("balanced", [True, False])
def test_output_permutations_fold_into_batchnorm_and_readers(balanced):
    torch.manual_seed(0)
    model = _Chain(balanced).eval()
    with torch.no_grad():
        for bn in (model.bn_a, model.bn_b):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 9, 9)
    result = condense_with_details(model, x)
    if balanced:  # both put-backs are permutations: BatchNorm, the next gather or the head absorb them
        assert result.model.a.out_index is None and result.model.b.out_index is None
        assert result.pass_edits["permutations_folded"] == 2
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), atol=1e-5)


def test_assignments_learn_on_real_images(tmp_path):
    # Fashion-MNIST images (a 600-image slice in tests/data), not synthetic noise: the
    # assignment logits get gradient from the real loss and the hard groups move while they learn.
    from learnsparse.core.config_dir import compose

    data = Path(__file__).parent / "data" / "fashion-mnist"
    cfg = compose(["experiment=quickstart", "model.name=condensenet_mini_plain", "sparsity=flgc",
                   "sparsity.flgc.groups=4", "sparsity.flgc.include=[*conv1]", "sparsity.flgc.learn_fraction=0.75",
                   "data.dataset.train_subset=null", "data.batch_size=64", "trainer.epochs=4",
                   "trainer.device=cpu", "logger=none", f"paths.data_dir={data}",
                   f"paths.output_dir={tmp_path / 'run'}", f"paths.log_dir={tmp_path}"])
    metrics = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    changed = [line["flgc_assignments_changed_pct"] for line in lines]
    assert sum(changed[:3]) > 0 and lines[-1]["flgc_frozen"] == 1
    assert metrics["val_top1"] > 40  # ten classes: it learned something (chance is 10%)


def test_uneven_flgc_export_round_trips_through_pt2_and_onnx(tmp_path):
    # Uneven random groups (per-group convs), folded permutations and BatchNorms, channels-last
    # weights: torch.export and ONNX (checked under onnxruntime) capture the same function.
    from learnsparse.export.artifacts import save_onnx, save_pt2

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=3).eval()
    sparsify(model, "flgc", groups=3, include=["layer*.conv*"])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FLGConv):
                m.in_logits.normal_()
                m.out_logits.normal_()
                m.freeze()
    x = torch.randn(2, 3, 32, 32)
    deployed = condense_with_details(model, x).model
    assert any(isinstance(m, PermutedGroupConv) and m.layout == "split" for m in deployed.modules())
    assert save_onnx(deployed, x, tmp_path / "model.onnx")[0] < 1e-4
    save_pt2(deployed, x, tmp_path / "model.pt2")
    program = torch.export.load(str(tmp_path / "model.pt2"))
    y = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(program.module()(y), model(y), atol=1e-5 * float(model(y).abs().max()))


def test_logged_macs_count_images_not_the_assignment_arithmetic():
    """An FLGC layer builds its mask from the assignments once per forward; the MACs logged
    per image are the conv's, as for the dense model it came from."""
    import torchvision

    from learnsparse import sparsify
    from learnsparse.core.counting import model_stats

    model = torchvision.models.resnet18(num_classes=10)
    dense = model_stats(model, torch.zeros(1, 3, 32, 32))["macs"]
    sparsify(model, method="flgc", groups=4, include=["layer*.conv*"])
    assert model_stats(model, torch.zeros(1, 3, 32, 32))["macs"] == dense
