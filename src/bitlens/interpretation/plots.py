"""Interpretation plots: score against firing rate, and interpretable features against the threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..plotting import save_figure, subplots


def plot_interpretation(out: Path, cfg, mode, records: list[dict[str, Any]]) -> list[str]:
    # a score is nan when every judgement was missing; matplotlib cannot place a log axis on no finite point
    scored = [r for r in records if r.get("score") and np.isfinite(mode.headline(r["score"]) or np.nan)]
    if not scored:
        return []
    name = "balanced accuracy" if cfg.mode == "default" else "ComSem score (fraction yes)"
    fig, ax = subplots(figsize=(6.5, 4))
    x = [max(r["firing_rate"], 1e-7) for r in scored]
    ax.scatter(x, [mode.headline(r["score"]) for r in scored], s=18, label="explanation")
    ctrl = [r for r in scored if r.get("control")]
    if ctrl:
        ax.scatter([max(r["firing_rate"], 1e-7) for r in ctrl], [mode.headline(r["control"]) for r in ctrl], s=18,
                   marker="x", color="grey", label="shuffled explanation (control)")
    ax.set_xscale("log")
    ax.set_xlabel("firing rate p")
    ax.set_ylabel(name)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"{len(scored)} scored features ({cfg.llm})", fontsize=9)
    save_figure(fig, out / "score_vs_rate.png")

    grid = np.linspace(0, 1, 41)
    fig, ax = subplots(figsize=(5.5, 4))
    ax.plot(grid, [sum(mode.interpretable(r["score"], t) for r in scored) for t in grid], label="explanation")
    if ctrl:
        ax.plot(grid, [sum(mode.interpretable(r["control"], t) for r in ctrl) for t in grid], color="grey",
                linestyle="--", label=f"shuffled control ({len(ctrl)} features)")
    ax.set_xlabel("threshold")
    ax.set_ylabel("interpretable features")
    ax.legend(fontsize=8)
    save_figure(fig, out / "interpretable_vs_threshold.png")
    return ["score_vs_rate.png", "interpretable_vs_threshold.png"]
