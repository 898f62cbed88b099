"""The trainer's event store: hooks put scalars, images and histograms here; writers drain it.

Hooks never look for each other. A plugin that draws a picture puts it in
`trainer.events`; whichever writer is configured (TensorBoard) takes it out on rank 0. Other
ranks and runs without a writer keep nothing: the store is disabled there, or emptied by the
trainer at the end of every epoch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    kind: str   # "scalar" | "image" | "histogram"
    tag: str
    value: Any  # a float; a CHW float image in [0, 1]; a 1-D tensor of values
    step: int


@dataclass
class EventStorage:
    enabled: bool = True  # False on ranks other than 0: every rank takes the same decisions
    pending: list[Event] = field(default_factory=list)

    def _put(self, kind: str, tag: str, value, step: int) -> None:
        if self.enabled:
            self.pending.append(Event(kind, tag, value, int(step)))

    def put_scalar(self, tag: str, value: float, step: int) -> None:
        self._put("scalar", tag, float(value), step)

    def put_image(self, tag: str, image, step: int) -> None:
        self._put("image", tag, image.detach().cpu() if hasattr(image, "detach") else image, step)

    def put_histogram(self, tag: str, values, step: int) -> None:
        self._put("histogram", tag, values.detach().flatten().cpu() if hasattr(values, "detach") else values, step)

    def drain(self) -> list[Event]:
        events, self.pending = self.pending, []
        return events
