"""Training: the Trainer loop, its hooks, and `train(cfg)`.

Names are loaded on first use so that light callers (the CLI's config pre-check) do not pay
for importing torch and torchvision.
"""
import importlib

_EXPORTS = {
    "HookBase": "learnsparse.core.hook_base",
    "Trainer": ".trainer",
    "NonFiniteLossError": ".trainer",
    "train": ".run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
