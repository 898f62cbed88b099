"""Plain-text tables for logs and reports: one formatter, so every table learnsparse prints
aligns the same way."""
from __future__ import annotations


def format_table(header: list[str], rows: list[list], right: set[int]) -> list[str]:
    """Columns as wide as their widest cell; numbers (columns in `right`) right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return ["  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            .rstrip() for r in [header, *rows]]
