"""Every CNN in torchvision's classification list, and one of each timm family, exported from
each of three learned structures: never a crash, never an invalid model, exact within 1e-5,
smaller wherever dead channels are removable, at most 30 CPU seconds at 64×64 (every model,
the 0.6 G-parameter ones included).

`make test` runs a fixed subset that covers every pattern (grouped convs, channel shuffle,
depthwise, linear hidden units, a transformer); the rest are `-m slow`:

    LEARNSPARSE_ZOO_LOG=zoo.jsonl .venv/bin/python -m pytest -m "slow or not slow" tests/test_model_zoo.py
    .venv/bin/python scripts/architecture_table.py zoo.jsonl   # the table in docs/regularizers.md
"""
import json

import pytest

from .model_zoo import EXPORT_SECONDS, RECIPES, TIMM, TORCHVISION, run_case

timm = pytest.importorskip("timm")  # an optional test dependency (the dev extra installs it)

FAST = {  # (model, recipe): each a pattern the export must handle, each a few CPU seconds at 64×64
    ("resnet18", "dead"),  # residual adds, flatten → linear
    ("regnet_x_400mf", "dead"),  # grouped convs (group width 16)
    ("shufflenet_v2_x0_5", "dead"),  # chunk, cat, channel shuffle
    ("mobilenet_v3_small", "dead"),  # depthwise convs, squeeze-excitation, hidden linear units
    ("squeezenet1_1", "flgc"), ("mnasnet0_5", "lgc"),
    ("timm/res2net50_14w_8s", "dead"),  # split → per-scale convs → cat
}
TRANSFORMERS = ("vit_", "swin_", "maxvit_")
CASES = [(name, recipe) for name in [*TORCHVISION, *(f"timm/{n}" for n in TIMM.values())] for recipe in RECIPES]


def _param(name, recipe):
    marks = [] if (name, recipe) in FAST else [pytest.mark.slow]
    return pytest.param(name, recipe, marks=marks, id=f"{name}-{recipe}")


@pytest.mark.parametrize("name,recipe", [_param(n, r) for n, r in CASES])
def test_export_is_exact_smaller_or_says_why(name, recipe):
    row = run_case(name, recipe)
    if row["outcome"] == "not applicable":
        assert name.startswith(TRANSFORMERS), row  # only a model with no conv sparsify can take
        return
    assert row["relative_diff"] <= 1e-5, row
    assert row["seconds"] <= EXPORT_SECONDS, row
    if name.startswith(("vit_", "swin_")) and recipe == "dead":
        assert row["note"].startswith("no conv structure to remove: "), row
    elif recipe in ("flgc", "lgc"):
        assert row["outcome"] == "smaller", row  # learned grouping always deploys as grouped convs
    else:
        # Dead channels: removed somewhere, or every layer that keeps them says why.
        assert row["outcome"] == "smaller" or row["kept_layers"] > 0, row
        assert all(row["kept_reasons"]), row


def test_the_table_script_replaces_only_the_families_rerun(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "scripts" / "architecture_table.py"
    spec = importlib.util.spec_from_file_location("architecture_table", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    row = {"model": "regnet_x_400mf", "family": "regnet", "recipe": "dead", "outcome": "smaller", "seconds": 1.5,
           "relative_diff": 1e-7, "kept_layers": 3, "kept_reasons": ["a grouped conv (groups=4) would lose …"]}
    log = tmp_path / "zoo.jsonl"
    log.write_text(json.dumps(row) + "\n")
    page = tmp_path / "page.md"
    old = ["| alexnet | 1 | 3/3 | 1 smaller | 1 smaller | 1 smaller | 0 | 1.3 s | – |",
           "| regnet | 15 | 15/15 | 15 smaller | – | – | 833 | 37.0 s | old |"]
    page.write_text("\n".join(["intro", script.START, *script.HEADER, *old, script.END, "rest", ""]))
    assert script.main([str(log), "--write", str(page), "--merge"]) == 0
    lines = page.read_text().splitlines()
    assert lines[0] == "intro" and lines[-1] == "rest"
    assert old[0] in lines and old[1] not in lines  # alexnet was not rerun: its row stays
    assert "| regnet | 1 | 1/1 | 1 smaller | – | – | 3 | 1.5 s | grouped conv, uneven per group |" in lines
    assert script.main([str(log), "--write", str(page)]) == 0  # without --merge: the log's families only
    assert old[0] not in page.read_text().splitlines()
