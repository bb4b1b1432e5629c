"""Target-distortion training: the dual-ascent controller of the entropy weight.

The BAE minimises ``H + (w_c / w_e) D`` subject to ``FVU <= F``. With a Lagrange multiplier ``lambda`` on the
constraint, the Lagrangian ``reg + lambda (FVU - F)`` has the same minimiser as the trainer's loss
``FVU + s (w_e H + w_c D)`` with ``s = 1 / lambda``, so the controller scales both configured weights by ``s``.
As in GECO (Rezende & Viola 2018), the multiplier follows a running (exponential moving average) FVU rather than the
noisy batch value, and is updated in log space so it stays positive:

    fvu_running <- fvu_running + (fvu_batch - fvu_running) / min(horizon, batches seen)
    log s       <- log s - dual_lr * clip((fvu_running - F) / F, -1, 1)

(the plain mean until ``horizon`` batches have been seen; the relative error makes the step size free of F; the
clip bounds how fast the weight moves when the model is far from the target, e.g. right after the warm-up). The weight rises while the reconstruction is better than the target
(bits are bought too dearly) and falls while it is worse.

The target is a statement about the held-out rows a run reports its FVU on, and they can be harder than the training
rows (other documents; on a 9-document store layers 25-30 ended 0.015-0.06 above). So with ``target_on =
"validation"`` the trainer measures the FVU of a fixed held-out sample every ``calibrate_every`` steps (a tenth of
the controller's time scale) and the controller follows ``fvu_running + offset``, where ``offset`` is the last
measured gap between the two.

Updates start when the entropy term switches on: during the
reconstruction-only warm-up the FVU says nothing about the price of a bit. The state is a few numbers, saved in the
trainer's checkpoint, so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

LOG_SCALE_BOUND = math.log(1e6)  # the weight may move six decades either way from the configured start
CALIBRATION_ROWS = 8192  # held-out rows per calibration (80 of them cost no measurable time in an 8000-step run)


@dataclass
class FVUController:
    """Dual-ascent state for one run (see the module docstring)."""

    target: float
    dual_lr: float
    horizon: int
    log_scale: float = 0.0
    fvu_running: float = float("nan")
    seen: int = 0
    updates: int = 0
    calibrate_every: int = 0
    """Steps between held-out calibrations of ``offset`` (0 = none: the target holds on the training rows)."""
    offset: float = 0.0
    """Held-out FVU minus the running training FVU, at the last calibration."""

    @property
    def scale(self) -> float:
        """Factor on the configured entropy and covariance weights (= 1 / lambda)."""
        return math.exp(self.log_scale)

    def update(self, fvu_batch: float, penalties_on: bool) -> None:
        """Fold one training batch's FVU into the running estimate; move the multiplier if the penalties are on."""
        if not math.isfinite(fvu_batch):
            return  # a diverged batch must not poison the running estimate
        self.seen += 1
        if self.seen == 1:
            self.fvu_running = fvu_batch
        else:
            self.fvu_running += (fvu_batch - self.fvu_running) / min(self.horizon, self.seen)
        if not penalties_on:
            return
        error = max(-1.0, min(1.0, (self.fvu_running + self.offset - self.target) / self.target))
        self.log_scale = max(-LOG_SCALE_BOUND, min(LOG_SCALE_BOUND, self.log_scale - self.dual_lr * error))
        self.updates += 1

    def calibrate(self, heldout_fvu: float) -> None:
        """Re-anchor the running FVU on the held-out FVU of the current model (ignored while either is undefined)."""
        if math.isfinite(heldout_fvu) and math.isfinite(self.fvu_running):
            self.offset = heldout_fvu - self.fvu_running

    def due(self, step: int) -> bool:
        """Whether the trainer should calibrate after ``step``: on schedule, once the multiplier has started moving."""
        return bool(self.calibrate_every and self.updates and step % self.calibrate_every == 0)

    def state(self) -> dict[str, Any]:
        return {"log_scale": self.log_scale, "fvu_running": self.fvu_running, "seen": self.seen,
                "updates": self.updates, "offset": self.offset}

    def load(self, state: dict[str, Any]) -> None:
        self.log_scale = float(state["log_scale"])
        self.fvu_running = float(state["fvu_running"])
        self.seen = int(state["seen"])
        self.updates = int(state["updates"])
        self.offset = float(state.get("offset", 0.0))  # checkpoints from before calibration had none


CONTROLLER_STEPS = 1000
"""Default time scale of the controller in training steps, at most (``LossConfig.controller_span``): ``dual_lr`` / ``fvu_horizon`` of -1 are 10 / T and T / 30
with T = min(total steps, this). Issue 12 first scaled them with the whole run, so a 400-step analysis and an
8000-step benchmark saw the same controller relative to their length. That made long runs fail: at 8000 steps the
multiplier moved 8x slower than the optimiser changes the code, overshot while the entropy ramp was still rising
(FVU 0.27 at step 2500, 1,568 units dead) and had not come back at the end (held-out FVU 0.2235 against 0.2). How
fast the code answers a change of price is set by the optimiser's learning rate, not by the run length, so the
time scale stops growing at the 1000 steps where the controller was validated (BENCHMARKS.md, issue 12)."""


def controller_for(loss: Any, total_steps: int) -> FVUController | None:
    """The controller a loss config asks for (a BAE ``LossConfig`` with ``target_fvu > 0``), else None.
    ``dual_lr`` / ``fvu_horizon`` of -1 follow the run up to ``CONTROLLER_STEPS``: 10 / T and T / 30 (>= 10)."""
    target = getattr(loss, "target_fvu", 0.0) or 0.0
    if target <= 0:
        return None
    if loss.preset != "scale_free":
        from ..io import BitlensError

        raise BitlensError("a target FVU needs the scale_free preset (its reconstruction term is the FVU); "
                           "set --target-fvu 0 with --preset paper")
    cap = loss.controller_span
    span = max(1, min(total_steps, cap) if cap > 0 else total_steps)
    dual_lr = 10 / span if loss.dual_lr == -1 else loss.dual_lr
    horizon = max(10, span // 30) if loss.fvu_horizon == -1 else loss.fvu_horizon
    calibrate_every = max(1, span // 10) if loss.target_on == "validation" else 0
    return FVUController(target=target, dual_lr=dual_lr, horizon=horizon, calibrate_every=calibrate_every)
