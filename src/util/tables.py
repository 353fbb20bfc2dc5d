"""CSV and plain-text tables: the one formatting of numbers in every CSV the project writes."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def _format_column(values: np.ndarray) -> list[str]:
    """Floats with 6 significant digits and NaN as an empty field; booleans as 0/1; strings RFC-4180 quoted."""
    if values.dtype.kind == "f":
        return ["" if v != v else f"{v:.6g}" for v in values.tolist()]
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    if values.dtype.kind == "U":
        return [f'"{v.replace(chr(34), 2 * chr(34))}"' if any(c in v for c in ',"\r\n') else v
                for v in values.tolist()]
    return [str(v) for v in values.tolist()]


def csv_text(columns: Mapping[str, np.ndarray]) -> str:
    """A CSV of equal-length columns (name -> array)."""
    formatted = [_format_column(np.asarray(values)) for values in columns.values()]
    lines = [",".join(columns), *(",".join(row) for row in zip(*formatted, strict=True))]
    return "\n".join(lines) + "\n"


def _cell(value: Any, exact: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if exact else f"{value:.6g}"
    return str(value)


def csv_rows(header: Sequence[str], rows: Iterable[Sequence[Any]], exact: bool = False) -> str:
    """A CSV of rows; None is an empty field; floats with 6 significant digits, or with `exact` as repr
    (read back, they give the same float)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(value, exact) for value in row] for row in rows)
    return buffer.getvalue()


def text_table(header: Sequence[str], body: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns as lines of text."""
    widths = [max(len(line[k]) for line in [header, *body]) for k in range(len(header))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in [header, *body]]


def fmt(value: Any, spec: str = ".4f") -> str:
    """A number for a message: None (or NaN) as n/a, ints as they are, floats by `spec`."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, (bool, str)):
        return str(value)
    return str(value) if isinstance(value, (int, np.integer)) else format(float(value), spec)


def key_value_lines(rows: Sequence[tuple[str, str]], width: int | None = None) -> list[str]:
    """`key  value` lines, the keys padded to `width` (default: the longest key of `rows`)."""
    width = max(len(key) for key, _ in rows) if width is None else width
    return [f"{key.ljust(width)}  {value}" for key, value in rows]


SECONDS_PER_MINUTE = 60
SECONDS_PER_HOUR = 3600


def duration_text(seconds: float) -> str:
    """`12.3 s`, `95 s (1.6 min)`, `7300 s (2.03 h)`."""
    if seconds < SECONDS_PER_MINUTE:
        return f"{seconds:.1f} s"
    if seconds < SECONDS_PER_HOUR:
        return f"{seconds:.0f} s ({seconds / SECONDS_PER_MINUTE:.1f} min)"
    return f"{seconds:.0f} s ({seconds / SECONDS_PER_HOUR:.2f} h)"
