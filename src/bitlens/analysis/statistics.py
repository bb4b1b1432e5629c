"""Reconstruction and code statistics of any coder (BAE, SAE baselines, transcoder, random control) on a set of rows.

Definitions (numerators and denominators accumulated separately over chunks in float64, divided once at the end):
y is the target (the input itself, or a transcoder's target rows), y_hat the coder's output.

* FVU = sum||y - y_hat||^2 / sum||y - mean(y)||^2 (variance about the mean, not about zero; a mean predictor has
  FVU 1, a perfect one 0); MSE per element in the original space;
* cosine = mean over rows of cos(y, y_hat); relative norm = mean over rows of ||y_hat|| / ||y|| (both over the rows with y != 0);
* a feature fires when its activation is non-zero (BAE: bit = 1; SAEs: a_j > 0, or a_j != 0 for the official
  TopK and identity transcoder whose activations can be negative); f_j = fraction of rows on which it fires;
  L0 = mean number of firing features per row; L0 minority = mean number of features in their less frequent state
  (sum_j min(f_j, 1 - f_j): for a BAE, the bits a compressed code must store; equals L0 when every f_j <= 0.5);
* dead: f = 0; constant-on: f = 1 (BAE bits do this); dense: 0.1 < f < 1 and 0.5 < f < 1, constant-on counted
  apart; rare: 0 < f < 1e-5 and 0 < f < 1e-6.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from ..ops.bit_products import int8_gemm_is_fast, int_mm
from .entropy import bernoulli_entropy_bits, categorical_entropy_bits


class CoderEvaluation(NamedTuple):
    stats: dict[str, Any]
    """The flat statistics of ``coder_statistics``."""
    frequencies: np.ndarray
    """[width] firing frequency f_j of every feature."""


COFIRING_BLOCK = 512
"""Columns per block of the co-firing Gram matrix: only its lower block triangle is multiplied (it is symmetric)."""


def add_cofiring_counts(gram: torch.Tensor | None, active: torch.Tensor, block: int = COFIRING_BLOCK) -> torch.Tensor:
    """``gram`` (int64 [width, width] on the CPU, or None) plus the co-firing counts ``active^T active`` of one
    chunk ``active`` [rows, width] (bool, any device).

    The counts are integers, so every route gives the same matrix; the cheap one multiplies only the units that
    fire in the chunk (dead units contribute zeros) and only the lower block triangle of the symmetric product:
    about half of the B m^2 multiply-adds, or far less when many units are dead. Where the int8 GEMM is slow
    (``ops.bit_products``) the product runs in fp32 straight from the bits, exact while rows < 2^24."""
    width = active.shape[1]
    if gram is None:
        gram = torch.zeros(width, width, dtype=torch.int64)
    live = active.any(0).nonzero().squeeze(1)
    k = live.numel()
    if k == 0:
        return gram
    fast_int8 = int8_gemm_is_fast(active.device.type)
    bits = active[:, live] if k < width else active
    bits = bits.to(torch.int8) if fast_int8 else bits.to(torch.float32)
    bits_t = bits.t()
    counts = torch.empty(k, k, dtype=torch.int64)
    for j0 in range(0, k, block):
        j1 = min(j0 + block, k)
        part = int_mm(bits_t[j0:], bits[:, j0:j1]) if fast_int8 else bits_t[j0:] @ bits[:, j0:j1]
        part = part.to(torch.int64).cpu()  # G[j0:, J]: this column block, rows on and below its diagonal
        counts[j0:, j0:j1] = part
        counts[j0:j1, j1:] = part[j1 - j0:].t()  # the mirrored block above the diagonal
    if k == width:
        gram += counts
    else:
        live = live.cpu()
        gram[live[:, None], live[None, :]] += counts
    return gram


@torch.no_grad()
def coder_statistics(model: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor | None = None,
                     chunk: int = 8192) -> dict[str, float]:
    """Evaluate ``model`` (with encode/decode) on rows [n, d] against ``targets`` [n, d_out] (default: the rows);
    returns a flat dict of floats (definitions in the module docstring)."""
    return evaluate_coder(model, rows, targets, chunk).stats


@torch.no_grad()
def firing_frequencies(model: torch.nn.Module, rows: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """[width] float64 fraction of ``rows`` [n, d] on which each feature fires (activation != 0); no co-firing
    statistics, so much cheaper than ``evaluate_coder``."""
    device = next(model.parameters()).device
    fires = None
    for start in range(0, rows.shape[0], chunk):
        active = (model.encode(rows[start:start + chunk].to(device).float()) != 0).sum(0, dtype=torch.float64).cpu()
        fires = active if fires is None else fires + active
    return fires / max(rows.shape[0], 1)


@torch.no_grad()
def evaluate_coder(model: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor | None = None,
                   chunk: int = 8192, cofiring: bool = True) -> CoderEvaluation:
    """``coder_statistics`` plus the per-feature firing frequencies. ``cofiring=False`` skips the width x width
    co-firing counts (``covariance`` is then NaN): they dominate the cost at large widths."""
    device = next(model.parameters()).device
    targets = rows if targets is None else targets
    if targets.shape[0] != rows.shape[0]:
        raise ValueError(f"{rows.shape[0]} rows but {targets.shape[0]} targets")
    n, d = targets.shape
    sum_x = torch.zeros(d, dtype=torch.float64)
    sum_xx = torch.zeros((), dtype=torch.float64)
    sq_err = torch.zeros((), dtype=torch.float64)
    cos_sum = torch.zeros((), dtype=torch.float64)
    ratio_sum = torch.zeros((), dtype=torch.float64)
    directed = 0  # rows with a non-zero target: cosine and norm ratio are undefined on a zero vector
    fires = None
    gram = None
    n_levels = getattr(model, "n_levels", 2)  # multi-bit coders (ours): entropy over each unit's levels
    level_counts = torch.zeros(model.width, n_levels, dtype=torch.float64) if n_levels > 2 else None
    for start in range(0, n, chunk):
        code = model.encode(rows[start:start + chunk].to(device).float())
        x_hat = model.decode(code)
        x = targets[start:start + chunk].float()
        if level_counts is not None:
            levels = torch.round(code.detach().cpu().double() * (n_levels - 1)).long()
            level_counts += torch.nn.functional.one_hot(levels, n_levels).sum(0, dtype=torch.float64)
        active = code != 0
        chunk_fires = active.sum(0, dtype=torch.float64).cpu()
        fires = chunk_fires if fires is None else fires + chunk_fires
        if cofiring:
            gram = add_cofiring_counts(gram, active)
        xd, xh = x.double().cpu(), x_hat.double().cpu()
        sum_x += xd.sum(0)
        sum_xx += xd.pow(2).sum()
        sq_err += (xd - xh).pow(2).sum()
        norms = xd.norm(dim=-1)
        keep = norms > 0  # e.g. a planted code's all-off rows
        directed += int(keep.sum())
        cos_sum += torch.nn.functional.cosine_similarity(xd[keep], xh[keep], dim=-1).sum()
        ratio_sum += (xh[keep].norm(dim=-1) / norms[keep]).sum()
    total_var = sum_xx - sum_x.pow(2).sum() / n
    f = fires / n
    # unbiased covariance of the whole set from its Gram matrix, then sum of |off-diagonal| entries
    if cofiring:
        cov = (gram.double() - n * torch.outer(f, f)) / max(n - 1, 1)
        cov_pen = cov.abs().sum() - cov.diagonal().abs().sum()
    else:
        cov_pen = torch.tensor(float("nan"))
    const_on = f == 1
    stats = {
        "n_rows": n,
        "width": int(f.numel()),
        "mse": float(sq_err / (n * d)),
        "fvu": float(sq_err / total_var.clamp_min(1e-30)),
        "cosine": float(cos_sum / max(directed, 1)),
        "relative_norm": float(ratio_sum / max(directed, 1)),
        "entropy_bits": float(bernoulli_entropy_bits(f).sum()) if level_counts is None
        else float(categorical_entropy_bits(level_counts / n).sum()),
        "covariance": float(cov_pen),
        "l0": float(f.sum()),
        "l0_minority": float(torch.minimum(f, 1 - f).sum()),
        "dead": int((f == 0).sum()),
        "constant_on": int(const_on.sum()),
        "dense": int(((f > 0.1) & ~const_on).sum()),
        "dense_half": int(((f > 0.5) & ~const_on).sum()),
        "rare_1e-5": int(((f > 0) & (f < 1e-5)).sum()),
        "rare_1e-6": int(((f > 0) & (f < 1e-6)).sum()),
    }
    if level_counts is not None:  # the on/off part of a multi-bit code, comparable with a BAE's bits
        stats["entropy_bits_on_off"] = float(bernoulli_entropy_bits(f).sum())
        stats["bits_per_unit"] = int(n_levels).bit_length() - 1
    return CoderEvaluation(stats, f.numpy())
