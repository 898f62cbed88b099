"""learnsparse: learn a sparsity structure while training a CNN, then export it as a real,
smaller, faster network."""
from .core.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "rebuild", "sparsify", "train", "__version__"]


# `learnsparse.train` is this function; the training machinery lives in `learnsparse.engine`
# (a subpackage of the same name would replace this attribute on first import).
def train(cfg):
    """Run one training job from a composed config; returns the final epoch's metrics."""
    from .engine.run import train as _train  # keep `import learnsparse` light

    return _train(cfg)


def sparsify(model, method: str = "flgc", groups: int = 4, condense_factor: int = 4, include=None, exclude=None,
             balanced: bool = False, temperature: float = 1.0):
    """Replace matching convs of any model with learned-grouping layers ("lgc" or "flgc");
    see `learnsparse.sparsity.learned_grouping.sparsify`."""
    from .sparsity.learned_grouping import sparsify as _sparsify

    return _sparsify(model, method, groups, condense_factor, include, exclude, balanced, temperature)


def rebuild(record: dict):
    """The module an architecture record describes (every checkpoint and condensed.pt carries
    one under "record"); see `learnsparse.core.record`."""
    from .core.record import rebuild as _rebuild

    return _rebuild(record)
