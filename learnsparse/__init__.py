"""learnsparse: learn a sparsity structure while training a CNN, then export it as a real,
smaller, faster network."""
from .errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "train", "__version__"]


def train(cfg):
    """Run one training job from a composed config; returns the final epoch's metrics."""
    from .train.run import train as _train  # keep `import learnsparse` light

    return _train(cfg)
