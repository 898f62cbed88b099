import json

import pytest
import torch

from learnsparse import train
from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.engine import NonFiniteLossError
from learnsparse.models import create_model
from learnsparse.sparsity.condensing import CondensingSchedule, stage_at


def test_stage_boundaries_follow_condensenet():
    # C = 4, first half of training: stages at progress 1/6, 2/6, 3/6.
    assert [stage_at(p, 4, 0.5) for p in (0, 0.16, 0.17, 0.34, 0.49, 0.5, 0.9, 1.0)] == [0, 0, 1, 2, 2, 3, 3, 3]
    assert stage_at(0.7, 1, 0.5) == 0


class _FakeTrainer:
    def __init__(self):
        from learnsparse.core.events import EventStorage

        self.progress = 0.0
        self.iter = 0
        self.events = EventStorage()


def test_passing_several_boundaries_at_once_applies_every_missed_stage():
    model = create_model("condensenet_mini", in_channels=1)
    plugin = CondensingSchedule(model, condense_in_training=False)  # the masks themselves are checked
    plugin.trainer = _FakeTrainer()
    plugin.trainer.progress = 0.95
    plugin.before_step()
    for _, layer in plugin.layers:
        assert int(layer.stage) == 3
        assert (layer.mask.sum(1) == layer.in_channels - 3 * (layer.in_channels // 4)).all()


def test_group_lasso_term_until_the_last_stage():
    model = create_model("condensenet_mini", in_channels=1)
    plugin = CondensingSchedule(model, group_lasso=1e-3, condense_in_training=False)
    plugin.name = "condensenet"  # as sparsity=condensenet names it
    plugin.trainer = _FakeTrainer()
    terms = plugin.extra_losses()
    assert set(terms) == {"loss_reg_condensenet"} and terms["loss_reg_condensenet"] > 0
    plugin.trainer.progress = 0.6
    plugin.before_step()
    assert plugin.extra_losses() == {}


def test_model_without_learned_group_convs_is_refused():
    with pytest.raises(ValueError, match="LearnedGroupConv"):
        CondensingSchedule(create_model("resnet20"))


def test_condensing_run_checkpoints_and_resumes_its_structure(tiny_cfg, tmp_path):
    # The masks themselves are checked: trained masked to the end (the swap has its own tests).
    common = ["model=condensenet_mini", "sparsity=condensenet", "sparsity.condensenet.group_lasso=1e-4",
              "sparsity.condensenet.condense_in_training=false", "data.dataset.image_size=28", "data.in_channels=1"]
    metrics = train(tiny_cfg(*common, "trainer.epochs=2"))
    assert metrics["condense_stage"] == 3
    first_epoch = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first_epoch["train_loss_reg_condensenet"] > 0  # logged as its own term until the last stage
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    masks = {k: v for k, v in ckpt["model"].items() if k.endswith(".mask")}
    assert masks and all(((m.sum(1) == m.shape[1] - 3 * (m.shape[1] // 4)).all()) for m in masks.values())
    assert ckpt["hooks"]["condensenet"]["stages"] == [3]  # the stages the layers are at
    assert ckpt["input_shape"] == [1, 28, 28]



def test_crash_mid_condensing_then_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    # 4 steps per epoch, 16 in all: stages at steps 3, 6 and 8. The crash at step 5 leaves the
    # epoch-0 checkpoint (stage 1); resuming must replay stages 2 and 3 exactly. Every layer
    # swaps at the last stage (timed forms could choose differently in the two runs).
    common = ["model=condensenet_mini", "sparsity=condensenet", "data.dataset.image_size=28", "data.in_channels=1",
              "sparsity.condensenet.trainable_form=deployed", "trainer.epochs=4"]
    train(tiny_cfg(*common, f"paths.output_dir={tmp_path}/full"))
    with pytest.raises(NonFiniteLossError):
        train(tiny_cfg(*common, f"paths.output_dir={tmp_path}/crash", "+callbacks.nan._target_=tests.helpers.NaNAtStep",
                       "+callbacks.nan.step=5"))
    assert load_checkpoint(tmp_path / "crash/checkpoints/last.pt")["hooks"]["condensenet"]["stages"][0] == 1
    train(tiny_cfg(*common, f"paths.output_dir={tmp_path}/crash", "trainer.resume=auto"))
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")["model"]
    b = load_checkpoint(tmp_path / "crash/checkpoints/last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
