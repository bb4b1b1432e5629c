"""Loss terms of the BAE objective, as pure functions.

Shapes: ``B`` batch, ``d`` hidden size, ``m`` code size (d' in the paper).
Entropies are in bits. Every function here is differentiable where the maths is.
"""

from __future__ import annotations

import torch

EPS = 1e-10  # the official code's epsilon inside log2(p + eps)


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-element mean squared error (the official code's L_r).

    Args: x, x_hat: [B, d]. Returns: scalar.
    """
    return (x - x_hat).pow(2).mean()


def normalized_mse(x: torch.Tensor, x_hat: torch.Tensor, variance: float | torch.Tensor) -> torch.Tensor:
    """Squared error per vector divided by the data's total variance E||x - mean||^2.

    Its expectation is the FVU, so it is free of the data's scale and of d.
    Args: x, x_hat: [B, d]; variance: scalar, E||x - mean(x)||^2 over the training data.
    Returns: scalar.
    """
    return (x - x_hat).pow(2).sum(-1).mean() / variance


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained on this batch: sum||x - x_hat||^2 / sum||x - mean_batch(x)||^2.

    Args: x, x_hat: [B, d]. Returns: scalar.
    """
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-30)


def firing_rate(codes: torch.Tensor) -> torch.Tensor:
    """Fraction of the batch with each bit on. Args: codes [B, m] in {0,1}. Returns: [m]."""
    return codes.mean(0)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Bernoulli entropy in bits, -p log2(p+eps) - (1-p) log2(1-p+eps), elementwise."""
    return -(p * torch.log2(p + EPS) + (1 - p) * torch.log2(1 - p + EPS))


def minibatch_entropy(codes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Sum over units of the Bernoulli entropy of each unit's batch firing rate, in bits.

    Args:
        codes: [B, m] binary codes (from the straight-through step, so gradients reach the encoder).
        threshold: below this many bits the term is replaced by a gradient-free 0 (official code; 0 = never).
    Returns: scalar.
    """
    h = binary_entropy(firing_rate(codes)).sum()
    if threshold > 0 and h.item() < threshold:
        return h.detach() * 0
    return h


def covariance_penalty(codes: torch.Tensor) -> torch.Tensor:
    """Sum of |C_ij| over all off-diagonal entries (both triangles) of the unbiased batch covariance.

    C = (codes - mean)^T (codes - mean) / (B - 1). Args: codes [B, m], B >= 2. Returns: scalar.
    """
    b = codes.shape[0]
    if b < 2:
        raise ValueError("the covariance penalty needs a batch of at least 2")
    centered = codes - codes.mean(0)
    cov = centered.T @ centered / (b - 1)
    return cov.abs().sum() - cov.diagonal().abs().sum()
