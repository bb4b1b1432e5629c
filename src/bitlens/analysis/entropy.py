"""Entropy of a set of hidden states, in bits, from their binary codes.

The BAE estimate is the sum of the units' marginal Bernoulli entropies, an upper bound on the codes' joint entropy
with equality when the bits are independent. This module also gives the Miller-Madow bias correction, the plug-in
joint entropy of the code words (meaningful only when the sample covers the distribution), and the gap between the
two, i.e. an estimate of the total correlation: when it is large the marginal sum overstates the entropy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

LN2 = math.log(2.0)


def bernoulli_entropy_bits(p: np.ndarray | torch.Tensor) -> np.ndarray:
    """H_b(p) in bits, exactly 0 at p = 0 and p = 1. Args: p [m]. Returns: [m] float64."""
    p = np.asarray(p.detach().cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(h, nan=0.0)


def categorical_entropy_bits(p: np.ndarray | torch.Tensor) -> np.ndarray:
    """Entropy in bits of each row of a distribution over levels (0 log 0 = 0). Args: p [m, L]. Returns: [m]
    float64. For L = 2 this is ``bernoulli_entropy_bits`` of the second column."""
    p = np.asarray(p.detach().cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log2(p), 0.0).sum(-1)
    return h


def plugin_entropy_bits(counts: np.ndarray) -> float:
    """Plug-in (maximum-likelihood) entropy in bits of a histogram of counts."""
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def code_words(codes: torch.Tensor | np.ndarray) -> np.ndarray:
    """Pack each binary row [n, m] into bytes [n, ceil(m/8)] so rows can be counted as symbols."""
    arr = np.asarray(codes.detach().cpu() if isinstance(codes, torch.Tensor) else codes)
    return np.packbits(arr.astype(bool), axis=1)


@dataclass
class EntropyEstimate:
    n_samples: int
    """Number of code vectors."""
    n_units: int
    """Code size d'."""
    marginal_bits: float
    """Sum over units of H_b(p_j): the BAE entropy estimate."""
    marginal_bits_corrected: float
    """Marginal sum with the Miller-Madow correction, +1/(2 n ln 2) bits per non-constant unit."""
    joint_bits: float
    """Plug-in entropy of the whole code words (capped at log2 n)."""
    joint_bits_corrected: float
    """Joint plug-in with Miller-Madow correction, +(K - 1)/(2 n ln 2) for K distinct words."""
    n_distinct: int
    """Distinct code words seen."""
    coverage: float
    """Good-Turing sample coverage 1 - (words seen once)/n: near 1 when the sample has seen most of the mass."""
    joint_reliable: bool
    """True when the joint estimate can be trusted (coverage >= 0.9 and the marginal sum < log2 n)."""
    total_correlation_bits: float
    """marginal_bits_corrected - joint_bits_corrected: > 0 means dependent bits (the sum overstates)."""
    active_units: int
    """Units that are neither always off nor always on in this sample."""

    def to_dict(self) -> dict:
        return asdict(self)

    def warning(self, tolerance_bits: float = 0.5) -> str | None:
        """A sentence for the user when the bits are measurably dependent, else None."""
        if self.joint_reliable and self.total_correlation_bits > max(tolerance_bits, 0.05 * self.joint_bits_corrected):
            return (f"bits are not independent: the marginal sum ({self.marginal_bits_corrected:.2f} bits) exceeds the "
                    f"joint entropy ({self.joint_bits_corrected:.2f} bits) by {self.total_correlation_bits:.2f} bits")
        return None


def estimate_entropy(codes: torch.Tensor | np.ndarray) -> EntropyEstimate:
    """Entropy of the set of vectors whose BAE codes are ``codes`` [n, m] (values 0/1)."""
    arr = np.asarray(codes.detach().cpu() if isinstance(codes, torch.Tensor) else codes)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"codes must be a non-empty [n, m] array, got shape {arr.shape}")
    n, m = arr.shape
    p = arr.mean(0, dtype=np.float64)
    marginal = float(bernoulli_entropy_bits(p).sum())
    active = int(((p > 0) & (p < 1)).sum())
    _, counts = np.unique(code_words(arr), axis=0, return_counts=True)
    joint = plugin_entropy_bits(counts)
    k = len(counts)
    singletons = int((counts == 1).sum())
    coverage = 1.0 - singletons / n
    marginal_c = marginal + active / (2 * n * LN2)
    joint_c = joint + (k - 1) / (2 * n * LN2)
    reliable = coverage >= 0.9 and marginal < math.log2(n)
    return EntropyEstimate(
        n_samples=n, n_units=m, marginal_bits=marginal, marginal_bits_corrected=marginal_c,
        joint_bits=joint, joint_bits_corrected=joint_c, n_distinct=k, coverage=coverage,
        joint_reliable=reliable, total_correlation_bits=marginal_c - joint_c, active_units=active,
    )


def batch_mean_entropy(codes: torch.Tensor | np.ndarray, batch_size: int = 512) -> float:
    """The official code's validation number: the mean over consecutive batches of the per-batch marginal sum.

    Biased low relative to the whole-set value (H_b is concave); provided for comparison with the paper.
    """
    arr = np.asarray(codes.detach().cpu() if isinstance(codes, torch.Tensor) else codes)
    sums = [bernoulli_entropy_bits(arr[i:i + batch_size].mean(0, dtype=np.float64)).sum()
            for i in range(0, arr.shape[0], batch_size)]
    return float(np.mean(sums))


BOOTSTRAP_RESAMPLES = 200
"""Resamples of the bootstrap interval on every reported entropy (issue 12: each estimate carries one)."""


def bootstrap_bits(codes: torch.Tensor, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                   chunk: int = 16384) -> tuple[float, float]:
    """95% interval (2.5% and 97.5% quantiles) of the marginal bits sum_j H_b(p_j) over Poisson-bootstrap
    resamples of the rows of codes [n, d'] (0/1). Each resample weighs every row by a Poisson(1) count, so one
    [resamples, n] @ [n, d'] product gives all the resampled firing rates; rows are taken in chunks."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(resamples, codes.shape[1], dtype=torch.float64)
    total = torch.zeros(resamples, 1, dtype=torch.float64)
    for start in range(0, codes.shape[0], chunk):
        c = codes[start:start + chunk].float()
        weights = torch.poisson(torch.ones(resamples, c.shape[0]), generator=g)
        counts += (weights @ c).double()  # exact: integer sums far below 2^24 per chunk
        total += weights.sum(1, keepdim=True).double()
    p = counts / total.clamp_min(1)
    h = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)).sum(1) / LN2
    lo, hi = torch.quantile(h, torch.tensor([0.025, 0.975], dtype=h.dtype)).tolist()
    return lo, hi
