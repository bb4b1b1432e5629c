"""Bookkeeping of a frontier sweep: is FVU monotone along each coder's ladder, and every coder read at shared FVUs.

Rows are the sweep's points (``sweep.py``): dicts with ``coder``, ``label``, ``setting`` and the metrics, each coder's
rows in ladder order (sparsest setting first), the BAE's ``paper`` point (another recipe, not a rung) last.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MONOTONE_TOL = 0.002
"""FVU may rise by this much between neighbouring rungs and still count as monotone (evaluation noise on 25k
held-out tokens is of this order)."""
TARGET_TOL = 0.01
"""A BAE point whose FVU exceeds its target by more than this did not reach the target."""
MATCHED_METRICS = ("dead_frac", "dense_frac", "dense_half_frac", "constant_on_frac", "l0", "l0_minority",
                   "entropy_bits", "ce_recovered", "kl", "lexical_f1")


def ladder(rows: Sequence[dict[str, Any]], coder: str) -> list[dict[str, Any]]:
    """The coder's rungs in ladder order (its rows without the paper point)."""
    return [r for r in rows if r["coder"] == coder and r["label"] != "paper"]


def monotonicity(rows: Sequence[dict[str, Any]], tol: float = MONOTONE_TOL) -> dict[str, dict[str, Any]]:
    """Per coder: ``monotone`` (FVU falls, within ``tol``, from each rung to the next denser one) and a ``note``
    naming every rise and every BAE target missed (either way) by more than ``TARGET_TOL``."""
    out = {}
    for coder in dict.fromkeys(r["coder"] for r in rows):
        rungs = ladder(rows, coder)
        rises = [f"FVU rises from {a['fvu']:.4f} ({a['label']}) to {b['fvu']:.4f} ({b['label']})"
                 for a, b in zip(rungs, rungs[1:]) if b["fvu"] > a["fvu"] + tol]
        missed = [f"target {r['setting']['target_fvu']:g} not reached in {r['steps']} steps (FVU {r['fvu']:.4f})"
                  for r in rungs if "target_fvu" in r["setting"] and r["fvu"] > r["setting"]["target_fvu"] + TARGET_TOL]
        under = [f"FVU {r['fvu']:.4f} below its target {r['setting']['target_fvu']:g} (the entropy weight was still "
                 f"rising after {r['steps']} steps)" for r in rungs
                 if "target_fvu" in r["setting"] and r["fvu"] < r["setting"]["target_fvu"] - TARGET_TOL]
        note = rises + missed + under
        if rises and missed:
            note.append("targets below the FVU this many steps can reach leave the entropy weight near zero, so "
                        "those points differ only by noise")
        out[coder] = {"monotone": not rises, "fvu": [r["fvu"] for r in rungs], "note": "; ".join(note)}
    return out


def matched_fvu(rows: Sequence[dict[str, Any]], n_levels: int = 3) -> dict[str, Any]:
    """Every coder's metrics linearly interpolated (in FVU, between its two bracketing rungs) at ``n_levels`` FVUs
    spread over the range all coders cover; ``levels`` is empty when their ranges do not overlap."""
    coders = list(dict.fromkeys(r["coder"] for r in rows))
    ranges = {}
    for coder in coders:
        f = [r["fvu"] for r in ladder(rows, coder)]
        if f:
            ranges[coder] = (min(f), max(f))
    if not ranges:
        return {"ranges": {}, "levels": [], "rows": []}
    lo, hi = max(a for a, _ in ranges.values()), min(b for _, b in ranges.values())
    levels = [] if lo > hi else sorted({round(float(v), 4) for v in np.linspace(lo, hi, n_levels)})
    out = []
    for level in levels:
        for coder in ranges:
            rungs = sorted(ladder(rows, coder), key=lambda r: r["fvu"])
            fvu = np.array([r["fvu"] for r in rungs])
            row = {"fvu": level, "coder": coder}
            for m in MATCHED_METRICS:
                y = np.array([r.get(m, float("nan")) for r in rungs], dtype=float)
                row[m] = float(np.interp(level, fvu, y))
            out.append(row)
    return {"ranges": {c: list(v) for c, v in ranges.items()}, "levels": levels, "rows": out}
