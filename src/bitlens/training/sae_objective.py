"""Objectives of the SAE baselines, transcoder and random control: pure functions of a batch.

    L = ||y_hat - y||^2 / Var(y)  +  w(t) * S

in the normalised spaces (x / s_in, y / s_out), with Var(y) the data's total variance there, so the first term's
expectation is the FVU and one weight works whatever the scale of the hidden states. S, per architecture:

* relu_sae, transcoder: sum_j |a_j| ||d_j|| / sqrt(Var) (L1 weighted by decoder column norms, so shrinking a and
  growing the decoder cannot dodge it; divided by sqrt(Var) to be dimensionless);
* jumprelu_sae: sum_j 1[z_j > theta_j] (L0, gradient to the thresholds through the step's pseudo-derivative);
* topk_sae, random: 0 (sparsity is structural).

w(t) ramps linearly from 0 over the first ``warmup`` steps (the usual L1 warm-up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..coders.jumprelu import step as jump_step
from ..config import Serializable
from .schedules import warmup

#: sparsity weight used when SparsityConfig.weight is -1 (calibrated on SmolLM2 layer 15, see BENCHMARKS.md)
DEFAULT_WEIGHT = {"relu_sae": 0.1, "transcoder": 0.1, "jumprelu_sae": 0.002}


@dataclass
class SparsityConfig(Serializable):
    """The objective of an SAE baseline: normalised reconstruction + weight * sparsity penalty."""

    weight: float = -1.0
    """Sparsity weight: L1 (relu_sae, transcoder) or L0 (jumprelu_sae); -1 = the architecture's default."""
    warmup: int = -1
    """Steps of linear ramp of the weight from 0 (-1 = a twentieth of training; 0 = full weight from the start)."""

    def __post_init__(self) -> None:
        if self.weight < 0 and self.weight != -1:
            raise ValueError("sparsity weight must be >= 0 (or -1 for the default)")

    def resolved_weight(self, architecture: str) -> float:
        return DEFAULT_WEIGHT.get(architecture, 0.0) if self.weight == -1 else self.weight


class SparseTerms(NamedTuple):
    loss: torch.Tensor
    """Weighted total that is back-propagated."""
    recon: torch.Tensor
    """Squared error per vector / data variance (its expectation is the FVU)."""
    sparsity: torch.Tensor
    """The architecture's sparsity penalty S, batch mean (unweighted)."""
    l0: torch.Tensor
    """Mean number of non-zero activations per row (logged, no gradient)."""
    sparsity_weight: float
    """Effective weight on ``sparsity`` at this step."""


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch is x [B, d] (target = input) or a pair (x [B, d_in], y [B, d_out])."""
    return batch if isinstance(batch, (tuple, list)) else (batch, batch)


def sparsity_penalty(model: torch.nn.Module, code: torch.Tensor, pre: torch.Tensor, variance: float) -> torch.Tensor:
    """S for a batch: code, pre [B, width] -> scalar (see the module docstring)."""
    arch = model.architecture
    if arch in ("relu_sae", "transcoder"):
        return (code.abs() * model.decoder_norms()).sum(-1).mean() / math.sqrt(variance)
    if arch == "jumprelu_sae":
        if not model.cfg.learn_threshold:
            return (pre > model.threshold).to(pre.dtype).sum(-1).mean()
        return jump_step(pre, model.threshold, model.cfg.bandwidth).sum(-1).mean()
    return code.new_zeros(())


def sae_objective(model: torch.nn.Module, batch, cfg: SparsityConfig, variance: float, step: int,
                  total_steps: int) -> SparseTerms:
    """Loss of a batch (raw space; see ``split_batch``); ``variance`` is E||y/s_out - mean||^2 of the training data."""
    x, y = split_batch(batch)
    pre = model.pre_activation(x)
    code = model.activate(pre)
    y_hat = model.decode_normalized(code)
    out_scale = getattr(model, "output_scale", model.input_scale)
    recon = (y_hat - y / out_scale).pow(2).sum(-1).mean() / variance
    ramp = max(1, total_steps // 20) if cfg.warmup < 0 else cfg.warmup
    weight = cfg.resolved_weight(model.architecture) * warmup(step, 0, ramp)
    sparsity = sparsity_penalty(model, code, pre, variance)
    loss = recon + weight * sparsity if weight else recon
    return SparseTerms(loss, recon, sparsity.detach() if not weight else sparsity,
                       (code != 0).sum(-1).float().mean().detach(), weight)
