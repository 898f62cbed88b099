"""Sweeps through the shipped Hydra launchers: each job its own folder, seed and checkpoint;
a resubmitted sweep's job resumes the same job of the last one; the SLURM config makes a valid
sbatch script."""
from pathlib import Path

import pytest
import torch

from learnsparse.core.checkpoint_io import load_checkpoint
from learnsparse.engine.resume import find_resume_checkpoint

from .cli_runner import run_cli

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install learnsparse[cluster]")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install learnsparse[cluster]")

TINY_MODEL = ["model=lenet5", "data.dataset.image_size=28", "trainer.epochs=1"]


@pytest.mark.parametrize("launcher, banner", [("joblib", "Joblib.Parallel(n_jobs=2"),
                                              ("submitit_local", "Submitit 'local' sweep output dir")])
def test_two_job_sweep_gives_each_job_its_folder_seed_and_checkpoint(tmp_path, launcher, banner):
    proc = run_cli("-m", f"hydra/launcher={launcher}", *TINY_MODEL, "seed=3,4", f"paths.log_dir={tmp_path}",
                   "task_name=sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert banner in proc.stdout + proc.stderr  # the sweep went through that launcher, not the basic one
    (sweep,) = tmp_path.glob("sweep/multirun_*")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == ["0", "1"]
    ckpts = [load_checkpoint(j / "checkpoints" / "last.pt") for j in jobs]
    assert [c["config"]["seed"] for c in ckpts] == [3, 4]
    assert [c["config"]["paths"]["output_dir"] for c in ckpts] == [str(j) for j in jobs]
    assert all(c["epoch"] == 0 for c in ckpts)
    assert all((j / "metrics.jsonl").is_file() and (j / ".hydra" / "config.yaml").is_file() for j in jobs)
    # Two seeds, two initialisations: the jobs did not share one run.
    first = next(iter(ckpts[0]["model"]))
    assert not torch.equal(ckpts[0]["model"][first], ckpts[1]["model"][first])


def _fake_run(folder: Path, config: dict) -> Path:
    path = folder / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save({"config": config, "model": {}, "iter": 3}, path)
    return path


def test_resume_auto_finds_the_same_job_of_an_earlier_sweep(tmp_path):
    """A sweep submitted again (a new multirun_<time>/ folder) with trainer.resume=auto: each job
    continues the job of the last sweep that has its configuration, not its neighbour's."""
    experiment = tmp_path / "sweep"
    config = {"seed": 0, "model": {"name": "lenet5"}, "trainer": {"resume": "auto", "epochs": 2}}
    earlier = {seed: _fake_run(experiment / "multirun_2026-01-01_00-00-00" / str(seed),
                               {**config, "seed": seed, "paths": {"output_dir": f"old/{seed}"}}) for seed in (0, 1)}
    for seed in (0, 1):
        job = {**config, "seed": seed, "paths": {"output_dir": f"new/{seed}"}}
        found = find_resume_checkpoint("auto", experiment / "multirun_2026-01-02_00-00-00" / str(seed), experiment,
                                       job)
        assert found == earlier[seed]
    other = {**config, "seed": 7}
    assert find_resume_checkpoint("auto", experiment / "x" / "0", experiment, other) is None


def test_slurm_config_makes_a_valid_sbatch_array(tmp_path, monkeypatch):
    """The shipped submitit_slurm config, through the plugin's own launch code up to `sbatch`:
    every key is one submitit accepts, and the script asks for one GPU and one task per job."""
    import submitit
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    from learnsparse.core.config_dir import CONFIG_MODULE

    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=submitit_slurm", f"hydra.sweep.dir={tmp_path}/sweep",
                                          "hydra.launcher.partition=gpu"], return_hydra_config=True)
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # as if srun were here
    captured = {}

    class Submitted(Exception):
        pass

    def map_array(executor, fn, *args):
        captured["executor"] = executor
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    launcher = instantiate(OmegaConf.to_container(cfg.hydra.launcher, resolve=True))
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    with pytest.raises(Submitted):
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    text = captured["executor"]._executor._make_submission_file_text("train", "uid")
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=10",
                 "#SBATCH --partition=gpu", "#SBATCH --time=1440", "@120"):
        assert line in text, line
    assert f"{tmp_path}/sweep/.submitit/" in text


def test_a_launcher_without_its_plugin_is_one_line(monkeypatch, capsys):
    import importlib.util

    from learnsparse import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_joblib") else real(name, *a))
    with pytest.raises(SystemExit) as e:
        cli.launcher_plugin_or_fail(["seed=0,1", "hydra/launcher=joblib"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: hydra/launcher=joblib needs the hydra-joblib-launcher package: pip install 'learnsparse[cluster]'"
    cli.launcher_plugin_or_fail(["hydra/launcher=submitit_local"])  # installed: no complaint
