"""Weight and learning-rate schedules, as pure functions of the step."""

from __future__ import annotations

import math


def warmup(step: int, start: int, ramp: int) -> float:
    """Multiplier in [0, 1]: 0 before ``start``, then a linear ramp over ``ramp`` steps (0 = hard switch).

    ``warmup(s, start, 0)`` is the official code's entropy switch: 0 until the start, 1 from it on.
    """
    if step < start:
        return 0.0
    if ramp <= 0:
        return 1.0
    return min(1.0, (step - start + 1) / ramp)


def cosine_tail(step: int, total: int, decay_fraction: float, final_ratio: float) -> float:
    """LR multiplier: 1 for the first (1 - decay_fraction) of training, then a cosine down to ``final_ratio``."""
    if decay_fraction <= 0 or total <= 0:
        return 1.0
    begin = total * (1 - decay_fraction)
    if step < begin:
        return 1.0
    t = min(1.0, (step - begin) / max(1.0, total - begin))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t))
