"""matplotlib set-up in one place: a Figure on the Agg canvas (no pyplot state, no display) and its PNG bytes."""

from __future__ import annotations

import io
from typing import Any

DPI = 100


def new_figure(inches: tuple[float, float], dpi: int = DPI, layout: str | None = None) -> Any:
    """A matplotlib Figure drawn on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=inches, dpi=dpi, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Any, dpi: int | None = None) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **({} if dpi is None else {"dpi": dpi}))
    return buffer.getvalue()
