from .hook_base import HookBase
from .run import train
from .trainer import NonFiniteLossError, Trainer

__all__ = ["HookBase", "NonFiniteLossError", "Trainer", "train"]
