"""The BAE training objective: weights and sums the pure loss terms of ``losses.py``."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ..coders.bae import BinaryAutoencoder
from ..coders.step import binarize
from . import losses
from .config import LossConfig
from .fast_step import StepSpec, step_losses
from .schedules import warmup


class LossTerms(NamedTuple):
    loss: torch.Tensor
    """Weighted total that is back-propagated."""
    recon: torch.Tensor
    """Reconstruction term: squared error / data variance (scale_free) or per-element MSE (paper)."""
    entropy: torch.Tensor
    """Minibatch entropy in bits, summed over units (unweighted)."""
    covariance: torch.Tensor
    """Sum of |off-diagonal covariance| of the bits (unweighted)."""
    entropy_weight: float
    """Effective weight applied to ``entropy`` at this step (includes warm-up and normalisation)."""
    cov_weight: float
    """Effective weight applied to ``covariance`` at this step."""


def term_weights(cfg: LossConfig, width: int, step: int, total_steps: int) -> tuple[float, float]:
    """Effective (entropy, covariance) weights at ``step``: warm-up times, for scale_free, 1/d' and 1/(d'(d'-1))."""
    # defaults: reconstruct alone for the first tenth (the penalties then prune a code that already exists),
    # ramp over the next fifth, and leave the remaining 70% at full weight to remove redundant copies
    # (floor with a small guard so 0.1 of 2555 steps is 255, as integer division gave before the fraction option)
    e_start = int(total_steps * cfg.warmup_fraction + 1e-9) if cfg.entropy_start < 0 else cfg.entropy_start
    c_start = e_start if cfg.cov_start < 0 else cfg.cov_start
    e_ramp = max(1, total_steps // 5) if cfg.entropy_ramp < 0 else cfg.entropy_ramp
    c_ramp = max(1, total_steps // 5) if cfg.cov_ramp < 0 else cfg.cov_ramp
    we = cfg.entropy_weight * warmup(step, e_start, e_ramp)
    wc = cfg.cov_weight * warmup(step, c_start, c_ramp)
    if cfg.preset == "scale_free":
        we /= width
        wc /= width * max(width - 1, 1)
    return we, wc


def bae_objective(model: BinaryAutoencoder, x: torch.Tensor, cfg: LossConfig, variance: float,
                  step: int, total_steps: int, world: Any = None) -> LossTerms:
    """Loss of a batch x [B, d] (raw space); with ``world`` (``distributed.World``, several processes) x is this
    rank's share of a global batch and the terms are those of the global batch (``distributed.py``).

    For scale_free the terms are computed on x / input_scale, and ``variance`` is E||x/s - mean||^2 of the
    training data; for paper everything is in the raw space and ``variance`` is unused.
    The step, the decoder and the loss terms run through ``fast_step`` (exact integer covariance, closed-form
    gradients, sparse decoder for sparse codes; elementwise work fused by ``torch.compile`` when ``cfg.compile``);
    ``reference_objective`` is the same objective composed from ``losses``.
    """
    xn = x / model.input_scale
    we, wc = term_weights(cfg, model.width, step, total_steps)
    spec = StepSpec(cfg.preset, float(variance) if cfg.preset == "scale_free" else 1.0, we, wc,
                    cfg.entropy_threshold, group=world if world is not None and world.active else None,
                    compile=cfg.compile)
    # the step runs inside the loss Function, so its surrogate joins the fused dL/dh pass (fast_step.step_losses)
    loss, recon, entropy, cov = step_losses(model.encoder(xn), xn, model.decoder.weight, model.decoder.bias, spec,
                                            model.cfg.surrogate, model.cfg.tau)
    return LossTerms(loss, recon, entropy, cov, we, wc)


def reference_objective(model: BinaryAutoencoder, x: torch.Tensor, cfg: LossConfig, variance: float,
                        step: int, total_steps: int) -> LossTerms:
    """``bae_objective`` written plainly from ``losses`` and autograd: the ground truth for the fast path."""
    xn = x / model.input_scale
    code = binarize(model.encoder(xn), model.cfg.surrogate, model.cfg.tau)
    recon_n = model.decoder(code)
    if cfg.preset == "scale_free":
        recon = losses.normalized_mse(xn, recon_n, variance)
    else:
        recon = losses.mse(xn, recon_n)
    entropy = losses.minibatch_entropy(code, cfg.entropy_threshold)
    cov = losses.covariance_penalty(code)
    we, wc = term_weights(cfg, model.width, step, total_steps)
    loss = recon + we * entropy + wc * cov
    return LossTerms(loss, recon, entropy, cov, we, wc)
