"""The best feasible evaluation of a run trained to a target FVU: what it returns when its last step misses.

Dual ascent prices a bit until the reconstruction sits at the target. A code is discrete, though: on a noise-free
planted code the exact code reconstructs at FVU 0, far below any target, so the multiplier keeps rising until the
price breaks a true bit, and the FVU then jumps past the target by a whole bit's share of the variance. At d = 512
(`bitlens synth --family fair --dim 512`) the code was exact by step 5500 of 8000, the entropy weight rose from 711
to 4,036 while the FVU stayed at 0.000, and a bit broke during the LR's cosine tail with no time left to recover:
7.04 bits at held-out FVU 0.13 for 8 planted (BENCHMARKS.md, issue 12).

Constrained optimisers keep the best feasible iterate for this reason. At every evaluation with the penalties on,
the trainer offers the held-out statistics to ``BestFeasible``; it keeps a copy of the weights of the evaluation
with the fewest bits whose held-out FVU is within the target plus ``TARGET_TOLERANCE`` (the smallest rate found
at the stated distortion). A run whose last evaluation is within that bound returns its last state as before; one
that ends above it returns the kept state, and says so. Pruning (``prune.py``) then runs on the returned state.

The kept weights and their statistics are part of the checkpoint, so a resumed run returns what the uninterrupted
one would.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file

from ..io import BitlensError, load_safetensors

FILE = "best_feasible.safetensors"


class Candidate(NamedTuple):
    step: int
    fvu: float
    """Held-out FVU at that evaluation."""
    entropy_bits: float
    """Held-out entropy (bits) at that evaluation."""


class BestFeasible:
    """The lowest-entropy evaluation of a run within ``limit`` held-out FVU, and its weights."""

    def __init__(self, limit: float):
        self.limit = limit
        self.best: Candidate | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def feasible(self, stats: dict[str, float]) -> bool:
        fvu = stats.get("fvu", float("nan"))
        return math.isfinite(fvu) and fvu <= self.limit

    def offer(self, step: int, stats: dict[str, float], model: torch.nn.Module) -> bool:
        """Keep ``model``'s weights if this evaluation is feasible with fewer bits than the kept one."""
        bits = stats.get("entropy_bits", float("nan"))
        if not (self.feasible(stats) and math.isfinite(bits)):
            return False
        if self.best is not None and bits >= self.best.entropy_bits:
            return False
        self.best = Candidate(step, float(stats["fvu"]), float(bits))
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True

    def settle(self, model: torch.nn.Module, last: dict[str, float]) -> Candidate | None:
        """At the end of training, with ``last`` the held-out statistics of the last evaluation: when they miss the
        bound and an evaluation was kept, load its weights into ``model`` and return it; else None."""
        if self.best is None or self.weights is None or not last or self.feasible(last):
            return None
        model.load_state_dict(self.weights)
        return self.best

    # ---- checkpoint ---------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any] | None:
        return None if self.best is None else self.best._asdict()

    def save(self, folder: Path) -> None:
        if self.weights is not None:
            save_file({k: v.cpu().contiguous() for k, v in self.weights.items()}, str(folder / FILE))

    def load(self, state: dict[str, Any] | None, folder: Path, model: torch.nn.Module) -> None:
        """Read back what ``state`` and ``save`` wrote for ``model`` (nothing when the run had kept no evaluation)."""
        if state is None:
            return
        file = folder / FILE
        try:
            best = Candidate(int(state["step"]), float(state["fvu"]), float(state["entropy_bits"]))
        except (KeyError, TypeError, ValueError) as e:
            raise BitlensError(f"{folder / 'trainer_state.json'}: best_feasible: not a kept evaluation ({e})") from None
        weights = load_safetensors(file)
        expected = model.state_dict()
        if {k: tuple(v.shape) for k, v in weights.items()} != {k: tuple(v.shape) for k, v in expected.items()}:
            raise BitlensError(f"{file}: does not fit the model (other tensor names or shapes)")
        self.best = best
        self.weights = {k: v.to(expected[k].device, expected[k].dtype) for k, v in weights.items()}
