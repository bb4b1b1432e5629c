"""Reconstruction and code statistics of a coder on a set of rows.

Definitions (accumulated over chunks, divided once at the end):
FVU = sum||x - x_hat||^2 / sum||x - mean(x)||^2; MSE per element in the original space; cosine = mean over rows of
cos(x, x_hat); L0 = mean active units per row; firing rate f_j = fraction of rows with unit j active;
dead f = 0; constant-on f = 1; dense 0.1 < f < 1 (and 0.5 < f < 1), constant-on counted apart.
"""

from __future__ import annotations

import torch

from ..training.bit_products import int_mm
from .entropy import bernoulli_entropy_bits


@torch.no_grad()
def coder_statistics(model: torch.nn.Module, rows: torch.Tensor, chunk: int = 8192) -> dict[str, float]:
    """Evaluate ``model`` (with encode/decode) on rows [n, d]; returns a flat dict of floats."""
    device = next(model.parameters()).device
    n, d = rows.shape
    sum_x = torch.zeros(d, dtype=torch.float64)
    sum_xx = torch.zeros((), dtype=torch.float64)
    sq_err = torch.zeros((), dtype=torch.float64)
    cos_sum = torch.zeros((), dtype=torch.float64)
    fires = None
    gram = None
    for start in range(0, n, chunk):
        x = rows[start:start + chunk].to(device).float()
        code = model.encode(x)
        x_hat = model.decode(code)
        active = (code != 0).to(torch.int8).cpu()
        # co-firing counts are integers: the exact int8 product is ~8x faster than a float64 Gram matrix
        chunk_gram = int_mm(active.T, active).long()
        fires = active.sum(0, dtype=torch.float64) if fires is None else fires + active.sum(0, dtype=torch.float64)
        gram = chunk_gram if gram is None else gram + chunk_gram
        xd, xh = x.double().cpu(), x_hat.double().cpu()
        sum_x += xd.sum(0)
        sum_xx += xd.pow(2).sum()
        sq_err += (xd - xh).pow(2).sum()
        cos_sum += torch.nn.functional.cosine_similarity(xd, xh, dim=-1).sum()
    total_var = sum_xx - sum_x.pow(2).sum() / n
    f = fires / n
    # unbiased covariance of the whole set from its Gram matrix, then sum of |off-diagonal| entries
    cov = (gram.double() - n * torch.outer(f, f)) / max(n - 1, 1)
    cov_pen = cov.abs().sum() - cov.diagonal().abs().sum()
    const_on = f == 1
    return {
        "n_rows": n,
        "mse": float(sq_err / (n * d)),
        "fvu": float(sq_err / total_var.clamp_min(1e-30)),
        "cosine": float(cos_sum / n),
        "entropy_bits": float(bernoulli_entropy_bits(f).sum()),
        "covariance": float(cov_pen),
        "l0": float(f.sum()),
        "dead": int((f == 0).sum()),
        "constant_on": int(const_on.sum()),
        "dense": int(((f > 0.1) & ~const_on).sum()),
        "dense_half": int(((f > 0.5) & ~const_on).sum()),
    }
