"""Feature task vectors (paper.md section 11) from the last-token states of k-shot ("good") and 0-shot ("bad") prompts.

* binary coders (BAE, binary random control): Delta_j = f_good - f_bad of each unit's firing rate; keep the ``top_k``
  units by |Delta|; v = sign(Delta) on them, 0 elsewhere;
* other coders (SAEs, multi-bit BAEs): Delta_j = difference of mean activations (dequantised values for multi-bit);
  v = Delta on the top-k units by |Delta|, 0 elsewhere;
* tv = W_out v in the raw space (the decoder without its bias: decode(v) - decode(0));
* centroid baseline: tv = mean(good states) - mean(bad states);
* with ``normalize`` every coder's tv is rescaled to the centroid's norm (as in all of the reference's plotted runs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class TaskVector(NamedTuple):
    vector: torch.Tensor
    """[d] the direction added to the residual stream (raw space)."""
    units: list[int]
    """Units kept (empty for the centroid)."""
    deltas: list[float]
    """Their Delta (firing-rate or mean-activation difference), in the order of ``units``."""
    raw_norm: float
    """||tv|| before any rescaling."""


def centroid_vector(good: torch.Tensor, bad: torch.Tensor) -> TaskVector:
    """mean(good) - mean(bad) of states [n, d]."""
    tv = good.double().mean(0) - bad.double().mean(0)
    return TaskVector(tv.float(), [], [], float(tv.norm()))


@torch.no_grad()
def coder_vector(coder: torch.nn.Module, good: torch.Tensor, bad: torch.Tensor, top_k: int) -> TaskVector:
    """The coder's task vector from states good [n, d] and bad [m, d] (see the module docstring)."""
    device = next(coder.parameters()).device
    code_good = coder.encode(good.float().to(device)).double()
    code_bad = coder.encode(bad.float().to(device)).double()
    if getattr(coder, "binary", False):
        delta = (code_good != 0).double().mean(0) - (code_bad != 0).double().mean(0)
    else:
        delta = code_good.mean(0) - code_bad.mean(0)
    k = min(top_k, delta.numel())
    order = torch.argsort(delta.abs(), descending=True, stable=True)[:k]
    order = order[delta[order] != 0]  # a unit with no difference carries no direction
    v = torch.zeros_like(delta)
    v[order] = torch.sign(delta[order]) if getattr(coder, "binary", False) else delta[order]
    v = v.float()[None]
    tv = (coder.decode(v) - coder.decode(torch.zeros_like(v)))[0].cpu()
    return TaskVector(tv, order.tolist(), delta[order].tolist(), float(tv.norm()))


def rescaled(tv: TaskVector, norm: float) -> TaskVector:
    """``tv`` scaled to the given norm (unchanged when it is zero)."""
    if tv.raw_norm == 0:
        return tv
    return tv._replace(vector=tv.vector * (norm / float(tv.vector.norm())))
