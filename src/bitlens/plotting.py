"""Figures without pyplot: matplotlib's object-oriented API on its Agg canvas, written atomically.

Nothing here imports pyplot or sets the global backend, so using bitlens never changes a notebook's plotting, and
``import bitlens`` does not import matplotlib at all (figures are built only when a plot is written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .io import atomic_path


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             **kwargs: Any) -> tuple[Any, Any]:
    """A new ``Figure`` (not registered with pyplot) and its axes, like ``pyplot.subplots``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Any, path: str | Path) -> None:
    """Write ``fig`` as a PNG at ``path`` atomically (a temporary file, then a rename)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
