"""`bitlens compare --match-fvu`: the BAE trained to the SAEs' reconstruction in the same run.

A one-table comparison at unequal FVU measures the settings as much as the architectures (issue 14). With
``match_fvu`` the SAE baselines train first, and the BAE's target FVU (``LossConfig.target_fvu``, reached by dual
ascent on the entropy weight) is the median of their held-out FVUs; the random control, which copies the BAE's
firing rates, follows the BAE. Without it ``--target-fvu`` states the target.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Sequence

from ..io import BitlensError

SAES = ("relu_sae", "topk_sae", "jumprelu_sae")
"""The coders whose FVUs set the target (the transcoder predicts another site, the random control copies the BAE)."""


def check_match(coders: Sequence[str]) -> None:
    """ValueError unless a matched comparison is possible with ``coders``."""
    if "bae" not in coders or not set(SAES) & set(coders):
        raise ValueError(f"match_fvu needs bae and at least one of {', '.join(SAES)}")


def match_order(plans: list) -> list:
    """The plans with the SAEs first (their FVUs set the BAE's target), the others after in their order."""
    return [p for p in plans if p.name in SAES] + [p for p in plans if p.name not in SAES]


def matched_target(stats: dict[str, dict[str, Any]]) -> float:
    """Median held-out FVU of the SAEs evaluated so far."""
    fvus = [stats[n]["fvu"] for n in SAES if n in stats]
    if not fvus:
        raise BitlensError("match_fvu: no SAE has been evaluated before the BAE")
    target = float(statistics.median(fvus))
    if not 0 < target < 1:
        raise BitlensError(f"match_fvu: the SAEs' median FVU {target:.4f} is not a reachable target (0, 1)")
    return target


def matched_plan(plan, stats: dict[str, dict[str, Any]]):
    """The BAE's plan with its target FVU set to the SAEs' median FVU."""
    return dataclasses.replace(plan, loss=dataclasses.replace(plan.loss, target_fvu=matched_target(stats)))
