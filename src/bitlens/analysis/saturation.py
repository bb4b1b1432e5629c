"""Where a rising curve saturates: the "implicit context window" of an entropy-vs-position curve.

Rule (documented in README, tested on synthetic curves):

1. The **plateau** is the mean of the last ``tail`` fraction of the points (at least ``min_tail`` points).
2. The **tolerance** is ``max(abs_tol, rel_tol * |plateau - first value|)``: a band around the plateau whose width is a
   fraction of the curve's total rise, so it is the same rule for a 10-bit and a 300-bit curve, with an absolute
   floor for flat curves.
3. The **saturation position** is the first position from which *every* later point stays within the band.
4. A curve whose last point is itself outside the band (e.g. a straight rising line: the tail mean lags behind the
   end) has not saturated within the measured range: the position is ``None``.
5. A curve that never leaves the band (no rise at all) saturates at its first position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass
class Saturation:
    saturation_position: int | None
    """First position from which the curve stays within tolerance of its plateau; None if it never settles."""
    plateau_bits: float
    """Mean of the curve's tail: the plateau height ("bandwidth")."""
    tolerance_bits: float
    """Half-width of the band around the plateau used by the rule."""

    def to_dict(self) -> dict:
        return asdict(self)


def detect_saturation(positions: Sequence[int], values: Sequence[float], *, tail: float = 0.25, min_tail: int = 2,
                      rel_tol: float = 0.1, abs_tol: float = 0.5) -> Saturation:
    """Apply the rule above to a curve ``values[i]`` measured at ``positions[i]`` (sorted ascending)."""
    pos = np.asarray(positions)
    val = np.asarray(values, dtype=np.float64)
    if pos.ndim != 1 or pos.shape != val.shape or len(pos) < 2:
        raise ValueError("need at least two (position, value) points of equal length")
    if np.any(np.diff(pos) <= 0):
        raise ValueError("positions must be strictly increasing")
    if not np.all(np.isfinite(val)):
        raise ValueError("values must be finite")
    n_tail = min(len(val), max(min_tail, int(np.ceil(tail * len(val)))))
    plateau = float(val[-n_tail:].mean())
    tol = max(abs_tol, rel_tol * abs(plateau - val[0]))
    inside = np.abs(val - plateau) <= tol
    if not inside[-1]:
        return Saturation(None, plateau, tol)
    # first index after the last point outside the band
    outside = np.flatnonzero(~inside)
    first = int(outside[-1]) + 1 if len(outside) else 0
    return Saturation(int(pos[first]), plateau, tol)
