"""The runtimes the export is timed in run what they say: torch.compile compiles every network it
is given, however many of one model class (Dynamo would otherwise fall back to eager silently)."""
from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from learnsparse.export.runtimes import runner


def test_compile_runner_compiles_more_networks_of_one_class_than_dynamos_default_limit(tmp_path):
    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(2, 3, 8, 8)
    widths = range(1, torch._dynamo.config.recompile_limit + 3)
    runs = [runner(torch.nn.Sequential(torch.nn.Conv2d(3, k, 3), torch.nn.ReLU()).eval(), "compile", x, 1, tmp_path)
            for k in widths]
    assert counters["stats"]["unique_graphs"] == len(widths)
    assert [r().shape[1] for r in runs] == list(widths)
    torch._dynamo.reset()
