"""`condense(model, example_inputs)`: squash masks, convert each trained layer, verify."""
from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from learnsparse.core.record import declare_edit, learned_structure, restore_structure
from learnsparse.core.runtimes import target_runtime

from .classifier import last_linear, prune_classifier_inputs
from .registry import convert_modules
from .structure.passes import remove_dead_structure, replay
from .tactics import DENSE, SPARSE, choose_tactics, whole_model_ms
from .thinned_widths import choose_widths
from .verify import check_equivalent, max_difference, verification_inputs


@dataclass
class ExportResult:
    model: nn.Module
    converted: list[tuple[str, str, str]] = field(default_factory=list)  # (name, trained kind, deployed kind)
    max_abs_diff: float = 0.0
    output_scale: float = 0.0
    exact: bool = True
    pass_edits: dict = field(default_factory=dict)  # what the structure passes did (replayed by `load`)
    tactics: dict = field(default_factory=dict)  # per learned layer: the form chosen, and why
    widths: dict = field(default_factory=dict)  # thinned layers: the width form chosen, and why


def example_tensor(example_inputs) -> torch.Tensor:
    """The one input tensor, given as torch.export takes it (a tuple of positional inputs) or
    bare. The structure passes trace image classifiers, which take one tensor."""
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs
    if isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 1 \
            and isinstance(example_inputs[0], torch.Tensor):
        return example_inputs[0]
    raise TypeError("example_inputs: a tensor or a tuple of one tensor (the model's input batch), got "
                    f"{type(example_inputs).__name__}" + (f" of {len(example_inputs)}"
                                                          if isinstance(example_inputs, (tuple, list)) else ""))


# Below this many images, an example is too small a batch to choose forms at: a grouped conv or
# a Gather that pays off at batch 64 can lose at batch 2, and the reverse.
SMALL_TACTIC_BATCH = 8


def condense_with_details(model: nn.Module, example_inputs, *, classifier_keep: float | None = None,
                          rtol: float = 1e-5, channels_last: bool | None = None, target: str | None = None,
                          batch: int | None = None, threads: int | None = None,
                          measure: bool = False) -> ExportResult:
    """`condense`, with what was converted and the measured difference (see ExportResult).

    `target` (a registered runtime's target: "eager", "onnxruntime", "compile", "pt2", "aoti")
    picks each learned layer's form, sparse or dense: by default by a fixed rule on multiply-adds
    (the same on every machine), or, with `measure=True`, by timing both on the layer's input in
    that runtime (recorded, so `load` replays it; a fresh export may choose differently);
    without it every learned layer is deployed sparse. Forms are timed at `batch` images; without `batch`, at the example's own
    batch — pass the batch you serve (an example of 2 images chooses forms for batch 2), and a
    warning says so when a target is set and the example holds fewer than 8 images.
    `channels_last` (default: for `target="eager"` only) stores 4-D weights NHWC, the layout
    eager PyTorch is fastest in; other exports keep plain weights, which trace to the same graph
    `save_onnx` writes (graphs have no memory format)."""
    example_inputs = example_tensor(example_inputs)
    # Only timing depends on the batch: the default rule (measure=False) reads multiply-adds.
    if target and measure and batch is None and example_inputs.shape[0] < SMALL_TACTIC_BATCH:
        warnings.warn(f"condense(target={target!r}) without `batch` chooses each layer's form at the example's "
                      f"batch of {example_inputs.shape[0]}; pass batch= the batch you deploy at "
                      f"(forms that win at batch {example_inputs.shape[0]} can lose at 64)", stacklevel=3)
    if channels_last is None:
        channels_last = target is not None and target_runtime(target).channels_last
    modes = {m: m.training for m in model.modules()}
    try:
        tactics = choose_tactics(model.eval(), example_inputs, target, batch, threads, measure) if target else {}
        result = _condense(model.eval(), example_inputs, classifier_keep, rtol, channels_last, tactics)
        if target and measure and tactics:
            # Layers were timed one at a time; the assembled network is checked as a whole
            # against every layer dense and every layer sparse, and the fastest of the three kept
            # (gathers that each pay off alone can lose together, and the reverse).
            candidates = {"chosen": result}
            for form in (DENSE, SPARSE):
                uniform = {n: {**t, "form": form, "whole_model": True} for n, t in tactics.items()}
                if any(t["form"] != form for t in tactics.values()):
                    candidates[form] = _condense(model.eval(), example_inputs, classifier_keep, rtol, channels_last,
                                                 uniform)
            if len(candidates) > 1:
                ms = whole_model_ms({k: r.model for k, r in candidates.items()}, example_inputs, target, batch,
                                    threads)
                result = candidates[min(ms, key=ms.get)]
        if target and measure and result.pass_edits.get("pruning_history"):
            # Thinned layers' widths: exact, padded to a multiple of 8 or 16, or dense (thinned_widths.py).
            model_out, widths = choose_widths(model.eval(), result.model, example_inputs, target, batch, threads,
                                              rtol, bool(result.pass_edits.get("channels_last")))
            result = dataclasses.replace(result, model=model_out, widths=widths)
        return result
    finally:
        for m, training in modes.items():  # the caller's model comes back in the mode it was in
            m.training = training


def _condense(trained: nn.Module, example_inputs: torch.Tensor, classifier_keep, rtol, channels_last,
              tactics: dict) -> ExportResult:
    exported = copy.deepcopy(trained).eval()
    forms = {name: t["form"] for name, t in tactics.items()}
    # Each step is declared on the exported model's record, so `load` rebuilds the same layers.
    declare_edit(exported, "convert", redo_convert, structure=learned_structure(exported), forms=forms)
    with torch.no_grad():
        rows = convert_modules(exported, forms)
    converted = [(n, type(old).__name__, type(new).__name__) for n, old, new in rows]
    structure_rows, pass_edits = remove_dead_structure(exported, example_inputs[:1])
    declare_edit(exported, "structure_passes", redo_structure_passes, edits=pass_edits, input_shape=list(example_inputs.shape[1:]))
    converted += structure_rows
    lossy = classifier_keep is not None and classifier_keep < 1
    if lossy:
        with torch.no_grad():
            name, linear = last_linear(exported)
            exported.set_submodule(name, prune_classifier_inputs(linear, classifier_keep))
        declare_edit(exported, "prune_classifier", redo_prune_classifier, keep=float(classifier_keep))
        converted.append((name, type(linear).__name__, "IndexSelectLinear"))
    if channels_last and example_inputs.dim() == 4:
        # A conv whose weight is NHWC gives an NHWC output, so the whole network then runs in
        # the layout oneDNN (CPU) and cuDNN under AMP are fastest in, even for NCHW inputs
        # (docs/performance.md).
        exported = exported.to(memory_format=torch.channels_last)
        declare_edit(exported, "memory_format", redo_memory_format, channels_last=True)
        pass_edits["channels_last"] = True
    exported.eval()
    inputs = verification_inputs(example_inputs)
    if lossy:
        # Lossy by request: measured and reported, not required to match.
        diff, scale = max_difference(trained, exported, inputs)
        return ExportResult(exported, converted, diff, scale, exact=False, pass_edits=pass_edits, tactics=tactics)
    diff, scale = check_equivalent(trained, exported, inputs, rtol)
    return ExportResult(exported, converted, diff, scale, pass_edits=pass_edits, tactics=tactics)


def condense(model: nn.Module, example_inputs, **options) -> nn.Module:
    """The deployed form of a trained model, proven equal to it on the example and on random
    inputs (max |Δ| ≤ rtol × output scale) unless a lossy option was asked for. The trained
    model is left as it was, in the mode it was in. Image models come out with plain weights,
    or channels-last ones for `target="eager"` (or `channels_last=True`); `torch.onnx.export` and
    `torch.export` of the result trace the deployed layers' plain ops either way.
    With a `target`, `measure=True` and no `batch`, forms are timed at the example's batch (a
    warning under 8 images). Options: those of `condense_with_details` (`classifier_keep`, `rtol`,
    `channels_last`, `target`, `batch`, `threads`, `measure`)."""
    return condense_with_details(model, example_inputs, **options).model


# How `rebuild` redoes each step when a deployed model is loaded (weights come afterwards,
# from the saved state dict).
@torch.no_grad()
def redo_convert(model: nn.Module, edit: dict) -> None:
    # The converters read the learned structure (masks, assignments) the export saw.
    restore_structure(model, edit.get("structure", {}))
    convert_modules(model, edit.get("forms"))


def redo_structure_passes(model: nn.Module, edit: dict) -> None:
    """The structure passes' edits replayed (an export's, or a shrink's during training)."""
    replay(model, edit["edits"], torch.zeros(1, *edit["input_shape"]))


@torch.no_grad()
def redo_prune_classifier(model: nn.Module, edit: dict) -> None:
    name, linear = last_linear(model)
    model.set_submodule(name, prune_classifier_inputs(linear, edit["keep"]))


def redo_memory_format(model: nn.Module, edit: dict) -> nn.Module:
    return model.to(memory_format=torch.channels_last if edit["channels_last"] else torch.contiguous_format)
