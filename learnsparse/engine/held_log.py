"""Hold what the build of a run logs, and tell it when the run starts.

The command line builds the run before Hydra makes the run folder (so a failed start leaves
nothing behind), which is also before Hydra sets up the run's log: lines logged then ("resumed
from ...") would be lost, or reach the console without `train.log`. They are held and told at
the start of training, under the log set-up the run has by then.
"""
from __future__ import annotations

import contextlib
import logging


class _Holder(logging.Handler):
    def __init__(self):
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held(logger: logging.Logger):
    """Within the block, `logger` (and its children) log into the list this yields."""
    holder = _Holder()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(holder)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)  # hold everything; the level that applies is checked when told
    try:
        yield holder.records
    finally:
        logger.removeHandler(holder)
        logger.setLevel(level)
        logger.propagate = propagate


def tell(logger: logging.Logger, records: list[logging.LogRecord]) -> None:
    """Log the held records now, those the logger's level lets through."""
    for record in records:
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    records.clear()
