"""`sparsity.report`: how much structure the zeros form, per layer, at every epoch end.

Per conv/linear layer: weight shape, non-zero weights, zero filters %, zero input channels %,
zero shape fibres % (W[:, c, i, j]) and whether the whole layer is zero. The table goes to the
log, the rows to `metrics.jsonl` (`sparsity_layers`), per-layer scalars, histograms of the
filter and channel group norms, and a connectivity image per layer to TensorBoard.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from learnsparse.core.hook_base import HookBase
from learnsparse.core.text_table import format_table

from .connectivity_images import connectivity_image
from .groups import group_norms
from .regularizers.selection_args import chosen_layers

log = logging.getLogger("learnsparse")


def layer_sparsity(weight: torch.Tensor) -> dict:
    w = weight.detach()
    zero = w == 0
    row = {"shape": list(w.shape), "nonzeros": int((~zero).sum()), "weights": w.numel(),
           "zero_filters_pct": 100.0 * float(zero.flatten(1).all(1).float().mean()),
           "zero_channels_pct": 100.0 * float(zero.transpose(0, 1).flatten(1).all(1).float().mean())}
    row["zero_fibres_pct"] = 100.0 * float(zero.all(0).float().mean()) if w.dim() > 2 else row["zero_channels_pct"]
    row["removed"] = bool(zero.all())
    return row


def sparsity_table(rows: dict[str, dict]) -> str:
    """The log's table: a row per layer, its zeros by filter, channel and fibre."""
    return "\n".join(format_table(
        ["layer", "shape", "nonzeros", "filters 0%", "channels 0%", "fibres 0%", "removed"],
        [[name, "x".join(map(str, r["shape"])), f"{r['nonzeros']:,}", f"{r['zero_filters_pct']:.1f}",
          f"{r['zero_channels_pct']:.1f}", f"{r['zero_fibres_pct']:.1f}", "yes" if r["removed"] else ""]
         for name, r in rows.items()], right={2, 3, 4, 5, 6}))


class SparsityReport(HookBase):
    def __init__(self, model: nn.Module, layers: str = "conv_linear", include: list[str] | None = None,
                 exclude: list[str] | None = None, images: bool = True, histograms: bool = True):
        self._selection = (layers, include, exclude)
        self.layers = chosen_layers(model, *self._selection)
        self.images, self.histograms = images, histograms

    def before_train(self) -> None:
        self.on_model_changed({})  # plugins built after this one may have replaced layers

    def on_model_changed(self, mapping: dict) -> None:
        # The report describes the model as it is now (thinner layers, deployed forms).
        self.layers = chosen_layers(self.trainer.unwrapped_model, *self._selection)

    def after_epoch(self) -> None:
        t = self.trainer
        rows = {name: layer_sparsity(m.weight) for name, m in self.layers}
        total = sum(r["weights"] for r in rows.values())
        m = t.epoch_metrics
        m["weights_zero_pct"] = 100.0 * (1 - sum(r["nonzeros"] for r in rows.values()) / max(1, total))
        m["layers_removed"] = sum(r["removed"] for r in rows.values())
        m["sparsity_layers"] = rows
        if getattr(t, "rank", 0) != 0:
            return
        log.info("sparsity after epoch %d:\n%s", t.epoch + 1, sparsity_table(rows))
        events = t.events
        for name, mod in self.layers:
            for key in ("zero_filters_pct", "zero_channels_pct", "zero_fibres_pct"):
                events.put_scalar(f"sparsity/{name}/{key}", rows[name][key], t.epoch + 1)
            if self.histograms:
                for kind in ("filter", "channel"):
                    events.put_histogram(f"group_norms/{name}/{kind}", group_norms(mod.weight.detach(), kind),
                                         t.epoch + 1)
            if self.images:
                events.put_image(f"connectivity/{name}", connectivity_image(mod), t.epoch + 1)
