"""Every CNN in torchvision's classification list, and one of each timm family, exported from
each of three learned structures: never a crash, never an invalid model, exact within 1e-5,
smaller wherever dead channels are removable, at most 30 CPU seconds at 64×64 (models over
200 M parameters: 30 s per 200 M).

`make test` runs a fixed subset that covers every pattern (grouped convs, channel shuffle,
depthwise, linear hidden units, a transformer); the rest are `-m slow`:

    LEARNSPARSE_ZOO_LOG=zoo.jsonl .venv/bin/python -m pytest -m "slow or not slow" tests/test_model_zoo.py
    .venv/bin/python scripts/architecture_table.py zoo.jsonl   # the table in docs/regularizers.md
"""
import pytest

from .model_zoo import RECIPES, TIMM, TORCHVISION, export_bound, run_case

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
    assert row["seconds"] <= export_bound(row["params_before"]), row
    if name.startswith(("vit_", "swin_")) and recipe == "dead":
        assert row["note"].startswith("no conv structure to remove: "), row
    elif recipe in ("flgc", "lgc"):
        assert row["outcome"] == "smaller", row  # learned grouping always deploys as grouped convs
    else:
        # Dead channels: removed somewhere, or every layer that keeps them says why.
        assert row["outcome"] == "smaller" or row["kept_layers"] > 0, row
        assert all(row["kept_reasons"]), row
