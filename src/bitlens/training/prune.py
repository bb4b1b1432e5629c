"""Pruning to the target (issue 12): the last, discrete step of "minimise the bits subject to FVU <= F".

Gradient descent through a step function cannot remove a unit that duplicates others: switching it off passes
through states that reconstruct worse, so a BAE trained to a target can end below the target with redundant units
(on 2 planted fair bits: 5 units whose joint entropy is 2 bits, 4.8 bits counted, FVU 0.002 against a target of
0.02). Given the trained encoder, this step finishes the constrained problem exactly for the decoder and greedily
for the code:

1. encode a sample of training rows; the decoder is refitted by least squares on the active units (the best
   decoder for that code, so the sample's FVU can only go down);
2. backward elimination: while some active unit can be dropped with the sample's FVU staying <= F, drop the one
   that costs the least reconstruction per bit saved. Dropping unit j from a least-squares fit raises the squared
   error by exactly ||beta_j||^2 / (G^-1)_jj (G the centred Gram matrix of the code), and the fit of the rest
   follows by a rank-one update, so the whole elimination costs O(k^2) per unit for k active units;
3. dropped (and constant-on) units are switched off for good: encoder row 0, bias -1; their decoder columns are 0
   (a constant-on unit is a constant, which the refitted decoder bias carries).

The refit overfits a little (k columns fitted on n rows), and unseen documents are harder or easier than the
training ones, so the budget on the rows it is fitted on is the target minus the gap it opens on check rows:

* by default (``LossConfig.prune_check = "validation"``) the run's validation rows, the held-out tokens its FVU and
  bits are reported on. They decide one thing, how many units go, so the reported FVU sits at the target (within
  one unit's cost, when training ended at or below it). With only held-back training rows, layers of a 60k-token
  store of 9 documents (2 held out) ended at held-out FVUs from 0.181 to 0.204 for a target of 0.2: the held-out
  documents were up to 0.02 easier or harder than the training ones, depending on the layer;
* ``"training"``: a held-back slice of the training rows (the last ``check_fraction`` of the sample, in store
  order, so mostly other documents); no held-out data is used.

When no unit can be dropped, the refit is kept only if it also lowers the held-back rows' FVU: on the demo store
after 8000 steps the trained decoder was already near the least-squares one, and the refit (1,780 columns on 52k
rows) raised the held-out FVU from 0.2076 to 0.2114. Otherwise the trained decoder is restored.

Exact duplicates make G singular; a ridge of 1e-6 of G's mean diagonal keeps the elimination defined and G^-1
accurate (it splits a duplicated column equally, and dropping one copy then costs ~0).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..analysis.entropy import bernoulli_entropy_bits

CHUNK = 8192  # rows per fp64 block of the Gram and cross products
RIDGE = 1e-6  # of the mean diagonal: keeps G^-1 accurate (condition <= 1e6) when units duplicate each other


class Pruning(NamedTuple):
    rows: int
    """Training rows the decoder was refitted and units judged on."""
    check_rows: int
    """Held-back training rows that measured the refit's gap."""
    target_fvu: float
    gap: float
    """FVU on the check rows minus FVU on the fitted rows, after the refit (>= 0 for held-back training rows)."""
    checked_on: str
    """validation (the run's held-out rows) or training (a held-back slice of the training rows)."""
    budget_fvu: float
    """The FVU allowed on the fitted rows: target_fvu - gap."""
    fvu_before: float
    """The sample's FVU of the trained model (training rows: not the held-out FVU a run reports)."""
    fvu_refit: float
    """After the least-squares decoder refit, before any unit is dropped."""
    fvu_after: float
    """After dropping units (<= budget_fvu unless the refit alone was above it)."""
    fvu_check_after: float
    """The held-back rows' FVU after dropping units."""
    bits_before: float
    """The sample's marginal entropy (sum of H_b over units) before."""
    bits_after: float
    fvu_check_before: float
    """The held-back rows' FVU of the trained model."""
    refit_kept: bool
    """False when nothing was dropped and the refit did not lower the held-back FVU: the trained decoder stays."""
    active_before: int
    """Units that fire on some but not all rows of the sample."""
    pruned: list[int]
    """The dropped units, in the order they were dropped."""


def _encode_bits(model: torch.nn.Module, xn: torch.Tensor) -> torch.Tensor:
    """bool [n, m] codes of the normalised rows xn [n, d], encoded in chunks: no [n, m] float pre-activations or
    codes (at d' = 2304 and 65,536 rows each is 604 MB; the bits are 151 MB)."""
    parts = [model.encoder(xn[i:i + CHUNK]) > 0 for i in range(0, len(xn), CHUNK)]
    return torch.cat(parts) if parts else torch.zeros(0, model.width, dtype=torch.bool, device=xn.device)


def _squared_error(model: torch.nn.Module, xn: torch.Tensor, code: torch.Tensor) -> float:
    """sum ||xn - decoder(code)||^2 over the rows xn [n, d] and their bits code [n, m], in chunks, in fp64."""
    return float(sum((xn[i:i + CHUNK] - model.decoder(code[i:i + CHUNK].float())).double().pow(2).sum()
                     for i in range(0, len(xn), CHUNK)))


def _fvu(model: torch.nn.Module, xn: torch.Tensor, code: torch.Tensor) -> float:
    """FVU of the rows xn [n, d] (normalised) decoded from their bits code [n, m]."""
    tss = float((xn.double() - xn.double().mean(0)).pow(2).sum().clamp_min(1e-30))
    return _squared_error(model, xn, code) / tss


@torch.no_grad()
def prune_to_target(model: torch.nn.Module, rows: torch.Tensor, target_fvu: float,
                    check_fraction: float = 0.2, check_rows: torch.Tensor | None = None) -> Pruning:
    """Refit ``model``'s decoder on ``rows`` [n, d] (raw training rows) and drop units while the fitted rows' FVU
    stays <= the target minus the gap the refit opens on the check rows; modifies the model in place (see the
    module docstring). The check rows are ``check_rows`` [n', d] when given (the run's validation rows: the gap
    may then be negative, when they are easier than the training rows), else the last ``check_fraction`` of
    ``rows``, held back from the fit (gap >= 0)."""
    dev = model.decoder.weight.device
    xn_all = rows.to(dev, torch.float32) / model.input_scale
    if check_rows is not None and len(check_rows) >= 2:
        xn, xn_check = xn_all, check_rows.to(dev, torch.float32) / model.input_scale
        n_check, checked_on, floor = len(xn_check), "validation", -float("inf")
    else:
        n_check = int(len(xn_all) * check_fraction) if len(xn_all) >= 10 else 0
        xn, xn_check = xn_all[:len(xn_all) - n_check], xn_all[len(xn_all) - n_check:]
        checked_on, floor = "training", 0.0
    code_check = _encode_bits(model, xn_check)  # encoded once: the encoder does not change below
    code = _encode_bits(model, xn)  # [n, m] bool
    n = code.shape[0]
    x_mean = xn.double().mean(0)
    xc = xn.double() - x_mean
    tss = float(xc.pow(2).sum().clamp_min(1e-30))
    fvu_before = _squared_error(model, xn, code) / tss  # the code is already encoded
    rate = code.sum(0).float() / n  # as the mean of 0.0/1.0 floats: the integer count (exact) over n
    bits = torch.as_tensor(bernoulli_entropy_bits(rate), dtype=torch.float64, device=dev)
    bits_before = float(bits.sum())
    active = torch.nonzero((rate > 0) & (rate < 1)).flatten()
    const = torch.nonzero(rate == 1).flatten()

    c = code[:, active]
    mu = c.sum(0, dtype=torch.float64) / n
    gram = torch.zeros(active.numel(), active.numel(), dtype=torch.float64, device=dev)
    cross = torch.zeros(active.numel(), xn.shape[1], dtype=torch.float64, device=dev)
    for i in range(0, n, CHUNK):  # fp64 throughout (chunked): near-duplicate units make G ill-conditioned
        ci = c[i:i + CHUNK].double() - mu
        gram += ci.t() @ ci
        cross += ci.t() @ xc[i:i + CHUNK]
    gram.diagonal().add_(RIDGE * float(gram.diagonal().mean()) if active.numel() else 0.0)
    ginv = torch.linalg.inv(gram) if active.numel() else gram
    beta = ginv @ cross  # [k, d]: the least-squares decoder columns
    sse = float(sum(((c[i:i + CHUNK].double() - mu) @ beta - xc[i:i + CHUNK]).pow(2).sum()
                    for i in range(0, n, CHUNK)))  # measured, not tss - <beta, cross>, which can cancel
    fvu_refit = sse / tss
    gap = 0.0
    if n_check:
        pred = (code_check[:, active].double() - mu) @ beta + x_mean
        check = xn_check.double()
        fvu_check = float((check - pred).pow(2).sum() / (check - check.mean(0)).pow(2).sum().clamp_min(1e-30))
        gap = max(floor, fvu_check - fvu_refit)
    budget_fvu = target_fvu - gap
    budget = budget_fvu * tss
    keep = list(range(active.numel()))
    h = bits[active]
    pruned: list[int] = []
    while keep:
        cost = beta.pow(2).sum(1) / ginv.diagonal().clamp_min(1e-300)  # [k]: SSE added by dropping each unit
        affordable = sse + cost <= budget
        if not bool(affordable.any()):
            break
        score = torch.where(affordable, cost / h.clamp_min(1e-12), torch.full_like(cost, float("inf")))
        j = int(score.argmin())
        sse += float(cost[j])
        col, gjj = ginv[:, j], ginv[j, j]
        beta = beta - torch.outer(col / gjj, beta[j])  # the least-squares fit without unit j (rank-one update)
        ginv = ginv - torch.outer(col, col) / gjj
        rest = torch.tensor([i for i in range(len(keep)) if i != j], dtype=torch.long, device=dev)
        pruned.append(int(active[keep[j]]))
        keep = [keep[i] for i in rest.tolist()]
        beta, ginv, h, mu = beta[rest], ginv[rest][:, rest], h[rest], mu[rest]
    # switched-off units get zero columns, so the codes encoded above give every FVU below
    fvu_check_before = _fvu(model, xn_check, code_check) if n_check else float("nan")
    kept = active[torch.tensor(keep, dtype=torch.long, device=dev)] if keep else active[:0]
    trained = (model.decoder.weight.clone(), model.decoder.bias.clone())
    w_out, b_out = model.decoder.weight, model.decoder.bias  # [d, m], [d]
    w_out.zero_()
    w_out[:, kept] = beta.t().to(w_out.dtype)
    b_out.copy_((x_mean - mu @ beta).to(b_out.dtype))
    w_out[:, const] = 0.0  # the refitted bias carries the constant-on units
    fvu_check_after = _fvu(model, xn_check, code_check) if n_check else float("nan")
    refit_kept = bool(pruned or not n_check or fvu_check_after < fvu_check_before)
    if not refit_kept:  # nothing to drop and the refit generalises worse than the trained decoder: undo it
        w_out.copy_(trained[0])  # (constant-on units stay on: their columns are constants of this decoder)
        b_out.copy_(trained[1])
        fvu_check_after = fvu_check_before
    off = torch.cat([const, torch.tensor(pruned, dtype=torch.long, device=dev)]) if refit_kept else const[:0]
    if off.numel():
        model.encoder.weight[off] = 0.0
        if model.encoder.bias is not None:
            model.encoder.bias[off] = -1.0
    fvu_after = _fvu(model, xn, code) if refit_kept else fvu_before
    return Pruning(n, n_check, target_fvu, gap, checked_on, budget_fvu, fvu_before, fvu_refit, fvu_after, fvu_check_after, bits_before, float(bits[kept].sum()), fvu_check_before, refit_kept,
                   int(active.numel()), pruned)
