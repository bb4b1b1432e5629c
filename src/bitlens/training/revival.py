"""Unit revival for the BAE (issue 12): re-initialise units that carry no information.

Every ``TrainConfig.revive_every`` steps (until ``revive_until`` of training), the trainer encodes a fixed sample of
training rows. A unit that never fires on it (dead) or always fires (constant-on) carries no bits. Each such unit is
re-initialised as dictionary-learning resampling does (Bricken et al. 2023), adapted to binary codes:

* a constant-on unit first folds its decoder column into the decoder bias (exact on the sample: it was always on),
  so removing it does not change the reconstruction;
* a row of the sample is drawn with probability proportional to its squared reconstruction error;
* the unit's encoder row becomes that row's unit-norm residual direction, its bias the (1 - rate) quantile of the
  projection, so it fires on a fraction ``rate`` of the sample (the sparse start's rate);
* the decoder columns of all revived units are fitted jointly by ridge least squares to the residual of the rest
  of the code. Fitting each column alone (the mean residual of the rows it fires on) is exact for one unit but not
  for many: units drawn towards the same high-error rows co-fire, and each then adds the whole residual. On layer 3
  of SmolLM2-135M (attention-sink rows thousands of times the typical norm) 530 such units made the training FVU
  4e5. A joint fit with any ridge >= 0 cannot raise the sample's error above that without the revived units;
* Adam's moments of the touched rows and columns are reset.

The draw uses a generator seeded by (seed, step), so a resumed run revives exactly as the uninterrupted one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..coders.base import column_quantile


class Revival(NamedTuple):
    step: int
    dead: int
    """Units that never fired on the sample before the revival."""
    constant_on: int
    """Units that always fired on the sample before the revival."""
    units: list[int]
    """The re-initialised units."""


def _reset_adam(opt: torch.optim.Optimizer, param: torch.Tensor, index, dim: int) -> None:
    state = opt.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key].index_fill_(dim, index, 0.0)


CHUNK_ROWS = 1024
"""Rows per pass of the encoder and decoder over the sample."""

RIDGE = 1e-2
"""Ridge of the joint decoder fit, relative to the mean firing count: keeps co-firing units' columns small and
equal rather than large and opposite; a lone unit's column is its mean residual shrunk by about 1%."""


def _joint_columns(firing: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """Decoder columns [k, d] minimising ||err - firing @ C||^2 + ridge ||C||^2 (firing [n, k] of 0/1, err [n, d]).
    The Gram matrix of a 0/1 code is a matrix of counts, exact in fp32 below 2^24 rows; the solve runs in fp64."""
    gram = (firing.t() @ firing).double()
    ridge = RIDGE * float(gram.diagonal().mean().clamp_min(1.0))
    gram.diagonal().add_(ridge)
    rhs = (firing.t() @ err).double()
    return torch.linalg.solve(gram, rhs).to(err.dtype)


@torch.no_grad()
def revive_units(model: torch.nn.Module, opt: torch.optim.Optimizer, rows: torch.Tensor, rate: float,
                 step: int, seed: int) -> Revival:
    """Re-initialise the dead and constant-on units of a BAE judged on ``rows`` [n, d] (raw training rows)."""
    xn = rows.to(model.input_scale.device) / model.input_scale
    n = xn.shape[0]
    # in chunks of rows, so each chunk's [rows, d'] pre-activations stay in the caches; the code is kept as bits
    code = torch.cat([model.encoder(xn[i:i + CHUNK_ROWS]) > 0 for i in range(0, n, CHUNK_ROWS)])  # bool [n, d']
    fires = code.sum(0)
    dead, const = fires == 0, fires == n
    units = torch.nonzero(dead | const).flatten()
    if units.numel() == 0:
        return Revival(step, 0, 0, [])
    w_out, b_out = model.decoder.weight, model.decoder.bias  # [d, d'], [d]
    on = torch.nonzero(const).flatten()
    if on.numel():
        b_out += w_out[:, on].sum(1)  # an always-on column is a constant: move it into the bias
    code[:, units] = False
    w_out[:, units] = 0
    # [n, d] residual without the units being revived
    err = torch.cat([xn[i:i + CHUNK_ROWS] - model.decoder(code[i:i + CHUNK_ROWS].float())
                     for i in range(0, n, CHUNK_ROWS)])
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    weight = err.pow(2).sum(1).double().cpu()
    picks = torch.multinomial(weight / weight.sum(), units.numel(), replacement=units.numel() > weight.numel(),
                              generator=g).to(err.device)
    directions = err[picks]
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [k, d]
    proj = xn @ directions.t()  # [n, k]
    threshold = column_quantile(proj, 1 - rate)
    firing = (proj > threshold).float()  # [n, k]
    columns = _joint_columns(firing, err)  # [k, d]
    model.encoder.weight[units] = directions
    if model.encoder.bias is not None:
        model.encoder.bias[units] = -threshold
        _reset_adam(opt, model.encoder.bias, units, 0)
    w_out[:, units] = columns.t()
    _reset_adam(opt, model.encoder.weight, units, 0)
    _reset_adam(opt, w_out, units, 1)
    return Revival(step, int(dead.sum()), int(const.sum()), units.tolist())
