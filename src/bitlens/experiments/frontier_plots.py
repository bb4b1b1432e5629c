"""The sweep's four frontier plots (matplotlib's object-oriented API only).

Where FVU is the x axis, every panel of every plot has the same FVU limits, so the coders (and the plots) are read
at equal reconstruction. Each coder is a line through its rungs in ladder order; the BAE's paper-recipe point is a
star of the BAE's colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..plotting import save_figure, subplots
from .frontier import ladder

FILES = ("frontier_l0.png", "frontier_ce.png", "frontier_units.png", "frontier_lexical.png")
UNIT_PANELS = (("dead_frac", "dead (f = 0)"), ("dense_frac", "dense (0.1 < f < 1)"),
               ("dense_half_frac", "dense (0.5 < f < 1)"), ("constant_on_frac", "constant-on (f = 1)"))


def _fvu_limits(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    fvu = [r["fvu"] for r in rows]
    pad = 0.05 * max(max(fvu) - min(fvu), 0.01)
    return min(fvu) - pad, max(fvu) + pad


def _draw(ax, rows: Sequence[dict[str, Any]], x: str, y: str) -> None:
    for i, coder in enumerate(dict.fromkeys(r["coder"] for r in rows)):
        rungs = ladder(rows, coder)
        ax.plot([r[x] for r in rungs], [r[y] for r in rungs], "o-", color=f"C{i}", ms=4, label=coder)
        for r in rows:
            if r["coder"] == coder and r["label"] == "paper":
                ax.plot([r[x]], [r[y]], "*", color=f"C{i}", ms=11, label=f"{coder} (paper recipe)")
    ax.grid(alpha=0.3)


def plot_frontiers(rows: Sequence[dict[str, Any]], out: str | Path) -> list[Path]:
    """Write the four plots into ``out``; returns their paths."""
    out = Path(out)
    xlim = _fvu_limits(rows)
    paths = [out / f for f in FILES]

    _single(rows, "l0", "fvu", "L0 (features firing per token; BAE: bits on)", "FVU (held-out)",
            "reconstruction against sparsity", paths[0], xscale="log")
    _single(rows, "fvu", "ce_recovered", "FVU (held-out)", "CE recovered when spliced (zero ablation)",
            "downstream loss at equal reconstruction", paths[1], xlim=xlim)
    fig, axes = subplots(2, 2, figsize=(10, 7), sharex=True, sharey=True)
    for ax, (key, title) in zip(axes.flat, UNIT_PANELS):
        _draw(ax, rows, "fvu", key)
        ax.set_xlim(*xlim)
        ax.set_title(title, fontsize=10)
    for ax in axes[1]:
        ax.set_xlabel("FVU (held-out)")
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of features")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, paths[2])

    _single(rows, "fvu", "lexical_f1", "FVU (held-out)", "mean F1 of the best token-set rule",
            "lexical baseline at equal reconstruction", paths[3], xlim=xlim)
    return paths


def _single(rows, x: str, y: str, xlabel: str, ylabel: str, title: str, path: Path, xscale: str = "linear",
            xlim: tuple[float, float] | None = None) -> None:
    """One frontier on its own axes, one line per coder."""
    fig, ax = subplots(figsize=(6.5, 4.5))
    _draw(ax, rows, x, y)
    ax.set_xscale(xscale)
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)
