"""Synthetic hidden states of known entropy (the paper's section 4.1).

x = sum_k c_k v_k + noise, with r random unit directions v_k in R^d and c uniform on {0,1}^r, so the set of
noise-free states has exactly r bits of entropy (2^r equally likely points, all distinct for random v_k).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


def known_entropy_data(n: int, dim: int, bits: int, seed: int = 0, noise: float = 0.0,
                       p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample n states.

    Args:
        n: number of rows; dim: d; bits: r latent bits; noise: std of added Gaussian noise per coordinate;
        p: firing probability of each latent bit (0.5 gives r bits of entropy; otherwise r * H_b(p)).
    Returns:
        x [n, dim] float32 and the latent bits c [n, bits] float32.
    """
    if bits < 1 or dim < 1 or n < 1:
        raise ValueError("n, dim and bits must be >= 1")
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(bits, dim, generator=g)
    directions = directions / directions.norm(dim=1, keepdim=True)
    c = (torch.rand(n, bits, generator=g) < p).float()
    x = c @ directions
    if noise > 0:
        x = x + noise * torch.randn(n, dim, generator=g)
    return x, c


FAMILIES = ("fair", "nonuniform", "superposed", "noisy")
"""Planted-code families of `bitlens synth` (issue 12):

* ``fair``: r independent fair bits on r random unit directions (the paper's section 4.1); truth r bits.
* ``nonuniform``: r independent bits with firing rates log-spaced from 5% to 50%; truth sum_k H_b(p_k).
* ``superposed``: r > d rare features (rates log-spaced from 0.5% to 5%) on random unit directions in d dimensions,
  so the directions cannot be orthogonal; truth sum_k H_b(p_k).
* ``noisy``: r fair bits plus isotropic Gaussian noise of total variance ``NOISY_VARIANCE`` (std
  sqrt(NOISY_VARIANCE / d) per coordinate unless set); the code's entropy is still r bits, the noise sets a floor
  on the reachable FVU (``PlantedCode.noise_fvu``).
"""
NOISY_VARIANCE = 0.16
"""Total variance of the noisy family's noise, E||noise||^2: std 0.05 per coordinate at d = 64, where the family was
first calibrated. Fixed in total rather than per coordinate so the noise floor (0.24 at r = 2 down to 0.05 at r = 12)
is the same at every d: with std 0.05 per coordinate the floor at d = 512 was 0.30-0.56, most of the variance was
noise, and the BAE coded the noise of its training rows (BENCHMARKS.md, issue 12, eleventh session)."""
FAMILY_RATES = {"fair": (0.5, 0.5), "noisy": (0.5, 0.5), "nonuniform": (0.05, 0.5), "superposed": (0.005, 0.05)}


def noise_std(family: str, dim: int, noise: float = -1.0) -> float:
    """Per-coordinate std of the noise a family adds in d = ``dim`` dimensions: ``noise`` when >= 0, else the
    family's (noisy: total variance ``NOISY_VARIANCE``; the others: none)."""
    if noise >= 0:
        return noise
    return math.sqrt(NOISY_VARIANCE / dim) if family == "noisy" else 0.0


def bernoulli_bits(p: torch.Tensor) -> torch.Tensor:
    """H_b(p) in bits, elementwise, with H_b(0) = H_b(1) = 0 (float64)."""
    p = p.double()
    q = 1 - p
    return -(torch.where(p > 0, p * torch.log2(p), 0) + torch.where(q > 0, q * torch.log2(q), 0))


class PlantedCode(NamedTuple):
    x: torch.Tensor
    """[n, d] float32 states."""
    codes: torch.Tensor
    """[n, r] float32 planted bits."""
    rates: torch.Tensor
    """[r] firing probability of each planted bit."""
    true_bits: float
    """sum_k H_b(p_k): the entropy of the planted code (its bits are independent)."""
    noise_fvu: float
    """Expected FVU of a perfect decoder of the code: d sigma^2 / (sum_k p_k(1-p_k) + d sigma^2)."""


def planted_code(family: str, n: int, dim: int, features: int, seed: int = 0,
                 noise: float = -1.0) -> PlantedCode:
    """Sample n states of a planted-code family (see ``FAMILIES``) with ``features`` planted bits.

    ``noise`` is the std per coordinate; < 0 takes the family's (``noise_std``).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    if features < 1 or dim < 1 or n < 1:
        raise ValueError("n, dim and features must be >= 1")
    if family == "superposed" and features <= dim:
        raise ValueError(f"the superposed family needs more features than dimensions (got {features} <= {dim})")
    sigma = noise_std(family, dim, noise)
    lo, hi = FAMILY_RATES[family]
    rates = torch.logspace(math.log10(lo), math.log10(hi), features) if lo != hi else torch.full((features,), hi)
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(features, dim, generator=g)
    directions = directions / directions.norm(dim=1, keepdim=True)
    if lo != hi:  # no ordering of rates by direction index (fair codes draw exactly as known_entropy_data)
        rates = rates[torch.randperm(features, generator=g)]
    c = (torch.rand(n, features, generator=g) < rates).float()
    x = c @ directions
    if sigma > 0:
        x = x + sigma * torch.randn(n, dim, generator=g)
    signal = float((rates.double() * (1 - rates.double())).sum())
    noise_var = dim * sigma ** 2
    return PlantedCode(x, c, rates, float(bernoulli_bits(rates).sum()), noise_var / (signal + noise_var))
