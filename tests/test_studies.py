"""The study scripts: every row composes with the real configs, and the trade-off plot reads
run folders into a picture and a table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import compare_condense_in_training  # noqa: E402
import compare_connectivity  # noqa: E402
import compare_group_convs  # noqa: E402


@pytest.mark.parametrize("rows", [*compare_connectivity.STUDIES.values(), compare_group_convs.ROWS,
                                  compare_condense_in_training.ROWS],
                         ids=[*compare_connectivity.STUDIES, "group_convs", "condense_in_training"])
def test_every_study_row_composes_and_builds(rows, tmp_path):
    from hydra.utils import instantiate

    from learnsparse.core.config_dir import compose

    for label, overrides in rows.items():
        cfg = compose([*overrides, "seed=0", "trainer.epochs=1", f"paths.output_dir={tmp_path}"])
        model = instantiate(cfg.model)
        assert sum(p.numel() for p in model.parameters()) > 0, label


def _fake_run(root: Path, row: str, seed: int, top1: float, macs: int) -> None:
    run = root / row / f"seed{seed}"
    (run / "export").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "val_top1": top1 - 5}) + "\n"
                                       + json.dumps({"epoch": 1, "val_top1": top1}) + "\n")
    (run / "export" / "report.json").write_text(json.dumps({"macs_after": macs, "params_after": 1000,
                                                            "input_shape": [1, 28, 28]}))
    (run / "result.json").write_text(json.dumps({"label": row.replace("_", " ")}))


def test_plot_tradeoff_draws_one_point_per_configuration(tmp_path):
    for seed, (a, b) in enumerate([(80.0, 70.0), (82.0, 72.0)]):
        _fake_run(tmp_path / "study", "wide_net", seed, a, 2_000_000)
        _fake_run(tmp_path / "study", "thin_net", seed, b, 500_000)
    png = tmp_path / "tradeoff.png"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "plot_tradeoff.py"), str(tmp_path / "study"), "--png", str(png)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert png.stat().st_size > 1000
    assert "| wide net | 1,000 | 2,000,000 | 81.00 ± 1.41 | 2 |" in proc.stdout
    assert "| thin net | 1,000 | 500,000 | 71.00 ± 1.41 | 2 |" in proc.stdout
    empty = subprocess.run([sys.executable, str(SCRIPTS / "plot_tradeoff.py"), str(tmp_path / "nothing")],
                           capture_output=True, text=True)
    assert empty.returncode != 0 and empty.stderr.strip().count("\n") == 0 and "no exported runs" in empty.stderr
