"""The trainer's held-out measurements, a part of ``trainer.Trainer``: the validation rows every evaluation reads
(sampled once), eval-mode statistics of the coder on them, and the target-FVU controller's held-out calibration
(``dual.py``) on its own fixed sample."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..analysis.statistics import evaluate_coder, heldout_fvu
from .dual import CALIBRATION_ROWS


class Validation:
    """Held-out measurement methods of ``Trainer`` (a base class of it): they read its ``val_rows``, ``cfg``,
    ``model``, ``world``, ``step``, ``total_steps``, ``controller`` and the caches ``Trainer.__init__`` sets to None."""

    def _maybe_calibrate(self) -> None:
        """The controller's held-out calibration (dual.py), when due: rank 0 measures, every rank applies. Not after
        the last step, when no step is left to use it."""
        if not self._calibrates or self.step >= self.total_steps or not self.controller.due(self.step):
            return
        heldout = float("nan")
        if self.world.main:
            if self._calibration_rows is None:  # a fixed sample, so a resumed run measures the same rows
                self._calibration_rows = self._validation_sample(CALIBRATION_ROWS)
            with self._eval_mode():
                heldout = heldout_fvu(self.model, *self._calibration_rows)
        self.controller.calibrate(self.world.broadcast_float(heldout))

    def eval_rows(self) -> torch.Tensor | None:
        """The (at most eval_tokens) validation rows every evaluation uses, read once; None without validation."""
        if self.val_rows is None or self.val_rows.n_rows == 0:
            return None
        if self._val_cache is None:
            self._val_cache = self._validation_sample(self.cfg.eval_tokens)
        return self._val_cache[0]

    def _validation_sample(self, limit: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """At most ``limit`` validation rows and, for a paired (transcoder) source, their targets."""
        targets = self.val_rows.target_rows(limit) if hasattr(self.val_rows, "target_rows") else None
        return self.val_rows.rows(limit), targets

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """The coder in eval mode inside, its training mode restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def _statistics(self, rows: torch.Tensor, targets: torch.Tensor | None) -> dict[str, float]:
        """``evaluate_coder``'s statistics of the current coder in eval mode."""
        with self._eval_mode():
            return evaluate_coder(self.model, rows, targets).stats

    def evaluate(self) -> dict[str, float]:
        """Statistics of the current coder on (at most eval_tokens of) the validation rows."""
        if self.eval_rows() is None:
            return {}
        return self._statistics(*self._val_cache)
