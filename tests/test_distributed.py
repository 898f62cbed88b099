"""Two CPU processes under torchrun (gloo): DDP keeps both ranks' weights identical."""
import os
import subprocess
import sys

import torch

from learnsparse.core.checkpoint_io import load_checkpoint

from .conftest import TINY


def test_two_process_gloo_run_ends_with_identical_weights(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "learnsparse.cli", *TINY, "model=condensenet_mini", "data.in_channels=1", "sparsity=condensenet",
           "sparsity.condensenet.condense_in_training=true", "sparsity.condensenet.trainable_form=deployed",
           "trainer.channels_last=true", "trainer.epochs=2",
           f"hydra.run.dir={tmp_path}/run", "+callbacks.save._target_=tests.helpers.SaveWeightsAtEnd",
           f"+callbacks.save.directory={tmp_path}/weights"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "weights/rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "weights/rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert all(torch.equal(ckpt["model"][k], w0[k]) for k in w0)
    # 128 images, batch 32, 2 ranks: each rank takes 2 steps per epoch.
    assert ckpt["iter"] == 4
    assert proc.stdout.count("test accuracy") == 1  # rank 0 alone reports
    output = proc.stdout + proc.stderr
    assert output.count("epoch 1/2") == 1, output[-3000:]  # and alone logs
    assert output.count("condensing: stage") == 2  # stages 1 and 3 (2 steps per epoch), once each
    assert "Grad strides do not match" not in output  # DDP's spurious channels-last 1x1 warning
    # The last stage is reached at step 2: from there both ranks train the deployed layers
    # (a new DDP wrapper around them), and the record says so.
    assert output.count("now train in their deployed form") == 1, output[-3000:]
    assert [e["op"] for e in ckpt["record"]["edits"]] == ["condense_in_training"]
    assert not any("LearnedGroupConv" in k for k in w0) and any(k.endswith("conv1.index") for k in w0)
