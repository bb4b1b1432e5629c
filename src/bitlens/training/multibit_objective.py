"""Training objective of the multi-bit autoencoder (``coders/multibit.py``; our design), written with autograd.

The same objective as the BAE's (``objective.reference_objective``) with the levels in place of the bits:
L = recon + w_e * H + w_c * D, H the sum over units of the categorical entropy of each unit's level distribution in
the batch, D the covariance penalty of the dequantised values. With one bit per unit every operation is the BAE's, in
the same order, so the terms and gradients equal ``reference_objective``'s exactly (tests/test_multibit.py). The
1-bit BAE itself keeps its fused fast step; this slower path is only used for k > 1.
"""

from __future__ import annotations

import torch

from ..coders.multibit import MultiBitAutoencoder, dequantize, level_probabilities
from . import losses
from .config import LossConfig
from .objective import LossTerms, term_weights


def level_entropy(steps: list[torch.Tensor], threshold: float = 0.0) -> torch.Tensor:
    """Sum over units of the categorical entropy (bits) of each unit's batch level distribution, from the steps
    [B, m] each; for one step this is ``losses.minibatch_entropy`` itself. Below ``threshold`` bits: a
    gradient-free 0 (the official floor)."""
    if len(steps) == 1:
        return losses.minibatch_entropy(steps[0], threshold)
    p = level_probabilities(steps)
    h = -(p * torch.log2(p + losses.EPS)).sum()
    if threshold > 0 and h.item() < threshold:
        return h.detach() * 0
    return h


def multibit_objective(model: MultiBitAutoencoder, x: torch.Tensor, cfg: LossConfig, variance: float,
                       step: int, total_steps: int) -> LossTerms:
    """Loss of a batch x [B, d] (raw space); terms as ``objective.LossTerms`` (entropy: level entropy in bits)."""
    xn = x / model.input_scale
    steps = model.steps(model.encoder(xn))
    code = dequantize(steps)
    recon_n = model.decoder(code)
    if cfg.preset == "scale_free":
        recon = losses.normalized_mse(xn, recon_n, variance)
    else:
        recon = losses.mse(xn, recon_n)
    entropy = level_entropy(steps, cfg.entropy_threshold)
    cov = losses.covariance_penalty(code)
    we, wc = term_weights(cfg, model.width, step, total_steps)
    loss = recon + we * entropy + wc * cov
    return LossTerms(loss, recon, entropy, cov, we, wc)
