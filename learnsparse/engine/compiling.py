"""`trainer.compile`: the model's forward compiled (torch.compile) for training and evaluation.

`false` (the default) trains eagerly; `true` compiles with torch's defaults (inductor);
`{mode: …, dynamic: …, backend: …}` passes those on (`mode: max-autotune`, `dynamic: false`,
`backend: aot_eager` for a quick check of the graphs without inductor's code generation).

What the compiled graph reads and what changes during a run:

- masks changed in place (a condensing stage: `mask.data = new`, `mask.scatter_`) are
  buffers, which Dynamo passes to the graph as inputs: a stage changes values, not the graph,
  and needs no recompile (tests/test_compile.py checks both the count and the loss);
- a module replaced (a swap, a shrink: every change through `Trainer.replace_modules`) is a
  new graph. `Trainer.notify_model_changed` calls `recompile(cause)`: Dynamo's caches are
  reset and the forward compiled afresh around the changed (and re-wrapped) model, logged
  with its cause, never left to guard failures and the recompile limit;
- what Dynamo does recompile by itself (train/eval mode, the epoch's smaller last batch, a
  branch on a buffer such as FLGC's `frozen`) is logged with Dynamo's reason
  (`torch._logging` "recompiles"), and the per-frame limit is set to fit: 8 variants per
  structure times (1 + the in-place structure changes the plugins announce, a hook's
  optional `structure_changes`). Past it Dynamo would fall back to eager in silence; here
  it raises (`fail_on_recompile_limit_hit`).

The compiled module wraps `trainer.model` (the DDP wrapper under torchrun, so Dynamo's
DDPOptimizer splits the graph at the gradient buckets); autocast and channels-last inputs
come from outside it, as in eager mode. The state dict, hooks and checkpoints keep working
on `trainer.unwrapped_model`: compiling changes how the forward runs, nothing that is stored.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from learnsparse.core.errors import UserError

log = logging.getLogger("learnsparse")

VARIANTS_PER_STRUCTURE = 8  # train/eval × full/last batch × margin for a graph break's resumes
_KEYS = ("mode", "dynamic", "backend", "fullgraph")


@dataclass(frozen=True)
class CompileSpec:
    mode: str | None = None
    dynamic: bool | None = None
    backend: str = "inductor"
    fullgraph: bool = False

    def options(self) -> dict:
        return {"mode": self.mode, "dynamic": self.dynamic, "backend": self.backend, "fullgraph": self.fullgraph}


def compile_spec(value) -> CompileSpec | None:
    """`trainer.compile` as a CompileSpec (None: eager); bad values are one UserError line."""
    if value is None or value is False:
        return None
    if value is True:
        return CompileSpec()
    if hasattr(value, "items"):
        given = dict(value.items())
        unknown = sorted(set(given) - set(_KEYS))
        if unknown:
            raise UserError(f"trainer.compile: unknown key(s) {unknown}; it takes {list(_KEYS)}")
        if given.get("dynamic") not in (None, True, False):
            raise UserError(f"trainer.compile.dynamic must be true, false or null (got {given['dynamic']!r})")
        spec = CompileSpec(**{k: v for k, v in given.items() if v is not None or k == "dynamic"})
        modes = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if spec.mode not in modes:
            raise UserError(f"trainer.compile.mode must be one of {list(modes[1:])} (got {spec.mode!r})")
        return spec
    raise UserError(f"trainer.compile must be false, true or {{mode: …, dynamic: …}} (got {value!r})")


class ModelCompiler:
    """Holds the compiled forward of `trainer.model` and compiles it afresh on request."""

    def __init__(self, spec: CompileSpec, structure_changes: int = 0):
        self.spec = spec
        self.module: nn.Module | None = None
        self.history: list[dict] = []  # one entry per (re)compile: cause, frames compiled under it
        self.frames = 0  # frames compiled since the last (re)compile (Dynamo's start callback)
        self.set_limits(structure_changes)
        # Dynamo's own recompiles (a guard that failed) say why in the log.
        torch._logging.set_logs(recompiles=True)

    def set_limits(self, structure_changes: int) -> None:
        limit = VARIANTS_PER_STRUCTURE * (1 + max(0, int(structure_changes)))
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, limit)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 32 * limit)
        # Past the limit Dynamo would run the frame eagerly, in silence: raise instead.
        config.fail_on_recompile_limit_hit = True

    def _count(self, *args, **kwargs) -> None:
        self.frames += 1

    def compile(self, model: nn.Module, cause: str) -> nn.Module:
        if self.history:
            self.history[-1]["frames"] = self.frames
        self.frames = 0
        torch._dynamo.callback_handler.register_start_callback(self._count)
        self.module = torch.compile(model, **self.spec.options())
        self.history.append({"cause": cause, "frames": 0})
        return self.module

    def recompile(self, model: nn.Module, cause: str) -> nn.Module:
        """A structure change: reset Dynamo's caches (they hold the old graph's guards and code)
        and compile the changed model afresh."""
        torch._dynamo.reset()  # also drops the start callback; compile() registers it again
        log.info("compile: %s; compiling the forward afresh (compile %d of this run)", cause, len(self.history) + 1)
        return self.compile(model, cause)

    def frames_compiled(self) -> list[int]:
        """Frames compiled under each (re)compile so far, the current one included."""
        return [h["frames"] for h in self.history[:-1]] + ([self.frames] if self.history else [])
