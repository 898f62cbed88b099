"""The CNNs users bring (torchvision's classification models, timm's families), the three ways
their structure is learned here, and one export of each: what `test_model_zoo` runs and
`scripts/architecture_table.py` tabulates.

- **dead**: 30% of every ungrouped conv's filters zeroed with the BatchNorm after them, and
  30% of every hidden linear layer's units, as SSL (or group lasso, or slimming) plus
  threshold-and-freeze leave them;
- **flgc** / **lgc**: `sparsify(method=…)`, with random frozen assignments or masks at the
  last stage.
"""
from __future__ import annotations

import json
import os
import time

import torch
import torch.nn as nn
import torchvision

from learnsparse import sparsify
from learnsparse.core.counting import count_params
from learnsparse.export import condense_with_details
from learnsparse.layers.end_state import at_end_state

from .structured_zeros import kill_filters

RECIPES = ("dead", "flgc", "lgc")
TORCHVISION = torchvision.models.list_models(module=torchvision.models)
# One model per family the issue names (timm names; pretrained=False: nothing downloads).
TIMM = {
    "ResNet-D": "resnet26d", "SE-ResNet": "seresnet18", "CSP": "cspresnet50", "Res2Net": "res2net50_14w_8s",
    "DLA": "dla34", "GhostNet": "ghostnet_100", "MixNet": "mixnet_s", "HRNet": "hrnet_w18_small",
    "RegNet": "regnetx_002", "DenseNet": "densenet121", "EfficientNet": "efficientnet_b0",
    "MobileNetV3": "mobilenetv3_large_100", "RepVGG": "repvgg_a0", "ConvNeXt": "convnext_atto",
    "ResNeSt": "resnest14d",
}
SIZE = 64
# The bound the issue sets, at 64×64, for every model (regnet_y_128gf and vit_h_14, 0.6 G
# parameters each, included). Counted in CPU seconds of this process on one thread: the
# development machine is shared, and wall time there measures the neighbours' load.
EXPORT_SECONDS = 30.0


def input_size(name: str) -> int:
    if "maxvit" in name:
        return 224  # its window partitions need a multiple of 7 × 32
    if name == "vit_h_14":
        return 70  # its patches are 14 wide
    return 80 if "inception" in name else SIZE  # Inception-v3's stem needs 75×75 at least


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if name.startswith("timm/"):
        import timm

        return timm.create_model(name.removeprefix("timm/"), pretrained=False, num_classes=10).eval()
    kwargs = {"image_size": input_size(name)} if name.startswith("vit_") else {}
    return torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs).eval()


def family(name: str) -> str:
    base = name.removeprefix("timm/")
    for fam, timm_name in TIMM.items():
        if name.startswith("timm/") and base == timm_name:
            return f"timm {fam}"
    for prefix in ("wide_resnet", "resnext", "resnet", "regnet", "efficientnet_v2", "efficientnet", "mobilenet_v2",
                   "mobilenet_v3", "mnasnet", "shufflenet", "squeezenet", "densenet", "convnext", "vgg", "vit",
                   "swin", "maxvit", "alexnet", "googlenet", "inception"):
        if base.startswith(prefix):
            return prefix
    return base


def prepared(name: str, recipe: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, dict]:
    model = build(name, seed)
    s = input_size(name)
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(seed))
    info: dict = {}
    if recipe == "dead":
        kill_filters(model, x[:1], seed)
    else:
        try:
            info["sparsify"] = sparsify(model, method=recipe, groups=4)
        except ValueError as e:  # nothing in the model can take the method (a transformer)
            info["skipped"] = str(e).splitlines()[0]
            return model, x, info
        at_end_state(model, seed)
    return model.eval(), x, info


def run_case(name: str, recipe: str, seed: int = 0) -> dict:
    """Export one model one way; the row the table is made of."""
    model, x, info = prepared(name, recipe, seed)
    row = {"model": name, "family": family(name), "recipe": recipe}
    if "skipped" in info:
        return {**row, "outcome": "not applicable", "note": info["skipped"]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start, wall = time.process_time(), time.perf_counter()
    try:
        result = condense_with_details(model, x)
    finally:
        torch.set_num_threads(threads)
    row["seconds"] = round(time.process_time() - start, 2)  # CPU seconds, one thread
    row["wall_seconds"] = round(time.perf_counter() - wall, 2)
    row["relative_diff"] = result.max_abs_diff / max(result.output_scale, 1e-12)
    row["params_before"], row["params_after"] = count_params(model), count_params(result.model)
    kept = result.pass_edits.get("kept_zeros", [])
    row["kept_layers"] = len(kept)
    row["kept_reasons"] = sorted({k["reason"] for k in kept})
    notes = [after for layer, _, after in result.converted if layer == "" and after.startswith("no conv structure")]
    if notes:
        row["note"] = notes[0]
    smaller = row["params_after"] < row["params_before"]
    row["outcome"] = ("no conv structure" if notes else "smaller" if smaller else
                      "kept with reason" if kept else "exact")
    _log(row)
    return row


def _log(row: dict) -> None:
    """With LEARNSPARSE_ZOO_LOG set, each row is appended there (the table script reads it)."""
    path = os.environ.get("LEARNSPARSE_ZOO_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
