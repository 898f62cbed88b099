"""`trainer.compile`: CondenseNet's schedule (3 condensing stages, then the swap) compiled.
The compiles are counted: the stages (masks changed in place) need none, the swap exactly
one, made on purpose; nothing runs eagerly past a limit. The losses are eager's."""
import pytest
import torch

from learnsparse.core.config_dir import compose
from learnsparse.core.errors import UserError
from learnsparse.engine.compiling import CompileSpec, compile_spec
from learnsparse.engine.run import build

from .conftest import TINY
from .resume_checks import run_train

# 96 images, batch 32: 3 steps per epoch, 4 epochs; stages at steps 2, 4 and 6, the swap at 6.
SCHEDULE = ["model=condensenet_mini", "data.in_channels=1", "sparsity=condensenet",
            "sparsity.condensenet.trainable_form=deployed", "trainer.epochs=4", "data.dataset.train_size=96"]


def _train(tmp_path, name: str, *overrides: str):
    run = build(compose([*TINY, *SCHEDULE, f"paths.output_dir={tmp_path / name}", f"paths.log_dir={tmp_path}",
                         *overrides]))
    try:
        run.train()
    finally:
        torch._dynamo.reset()
    return run.trainer


def test_compile_setting():
    assert compile_spec(False) is None and compile_spec(None) is None
    assert compile_spec(True) == CompileSpec()
    assert compile_spec({"mode": "max-autotune", "dynamic": False}) == CompileSpec(mode="max-autotune", dynamic=False)
    with pytest.raises(UserError, match=r"unknown key\(s\) \['fast'\]"):
        compile_spec({"fast": True})
    with pytest.raises(UserError, match="trainer.compile.mode must be one of"):
        compile_spec({"mode": "quick"})
    with pytest.raises(UserError, match="trainer.compile must be false, true or"):
        compile_spec("yes")


def _assert_compiled_schedule(compiled, eager, rtol):
    history = compiled.compiler.history
    # Compiled twice, both on purpose: at the start, and when the swap replaced the 12 layers.
    assert [h["cause"] for h in history] == ["start", "12 module(s) replaced at step 6 (now IndexSelectGroupConv)"]
    frames = compiled.compiler.frames_compiled()
    # Each structure was compiled (training, then evaluation): none ran eagerly instead. The
    # first structure lived through 2 condensing stages and compiled no more than the second,
    # which saw none: a stage changes the masks' values, not the graph.
    assert frames[0] > 0 and frames[0] == frames[1], frames
    assert torch._dynamo.config.fail_on_recompile_limit_hit
    for a, b in zip(compiled.history, eager.history):
        for key in ("train_loss_ce", "val_loss", "val_top1"):
            assert a[key] == pytest.approx(b[key], rel=rtol, abs=rtol), (a["epoch"], key)
    for k, v in eager.unwrapped_model.state_dict().items():
        w = compiled.unwrapped_model.state_dict()[k]
        assert torch.allclose(w.float(), v.float(), rtol=rtol, atol=rtol), k


def test_compiled_condensenet_schedule_counts_its_compiles_and_matches_eager(tmp_path):
    """aot_eager: Dynamo's graphs and AOTAutograd's joint graph, without inductor's code
    generation (seconds on a CPU); the inductor run below is the slow one."""
    eager = _train(tmp_path, "eager")
    compiled = _train(tmp_path, "compiled", "trainer.compile={backend: aot_eager}")
    _assert_compiled_schedule(compiled, eager, rtol=1e-5)


@pytest.mark.slow
def test_inductor_compiled_condensenet_schedule_matches_eager(tmp_path):
    eager = _train(tmp_path, "eager")
    compiled = _train(tmp_path, "compiled", "trainer.compile=true")
    _assert_compiled_schedule(compiled, eager, rtol=1e-4)


@pytest.mark.slow  # two more in-process runs; the schedule test above is the fast guard
def test_compile_with_bf16_autocast_and_channels_last(tmp_path):
    settings = ("trainer.amp=bf16", "trainer.channels_last=true", "trainer.epochs=2")
    eager = _train(tmp_path, "eager", *settings)
    compiled = _train(tmp_path, "compiled", *settings, "trainer.compile={backend: aot_eager}")
    # 6 steps: the stages at 1 and 2, the swap at 3; compiled at the start and at the swap.
    assert len(compiled.compiler.history) == 2 and all(n > 0 for n in compiled.compiler.frames_compiled())
    for a, b in zip(compiled.history, eager.history):
        assert a["train_loss_ce"] == pytest.approx(b["train_loss_ce"], rel=2e-2)


def test_bad_compile_setting_is_one_line(tmp_path):
    proc = run_train("trainer.compile={mode: quick}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: trainer.compile.mode must be one of"), proc.stderr[-2000:]


@pytest.mark.slow
def test_compiled_under_torchrun_both_ranks_end_identical(tmp_path):
    """DDP wrapped by torch.compile (gloo, 2 CPU processes), through the swap: one recompile
    per rank, on purpose, and the ranks' weights stay identical."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "learnsparse.cli", *TINY, *SCHEDULE, "trainer.epochs=2", "data.dataset.train_size=128",
           "trainer.compile={backend: aot_eager}", f"hydra.run.dir={tmp_path}/run",
           "+callbacks.save._target_=tests.helpers.SaveWeightsAtEnd", f"+callbacks.save.directory={tmp_path}/weights"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    w0 = torch.load(tmp_path / "weights/rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "weights/rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # 128 images, batch 32, 2 ranks: 4 steps; the swap at step 2. Rank 0 narrates it.
    assert output.count("module(s) replaced at step 2 (now IndexSelectGroupConv); compiling the forward afresh") == 1
