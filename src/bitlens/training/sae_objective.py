"""Objectives of the SAE baselines, transcoder and random control: pure functions of a batch.

    L = ||y_hat - y||^2 / Var(y)  +  w(t) * S

in the normalised spaces (x / s_in, y / s_out), with Var(y) the data's total variance there, so the first term's
expectation is the FVU and one weight works whatever the scale of the hidden states. S, per architecture:

* relu_sae, transcoder: sum_j |a_j| ||d_j|| / sqrt(Var) (L1 weighted by decoder column norms, so shrinking a and
  growing the decoder cannot dodge it; divided by sqrt(Var) to be dimensionless);
* jumprelu_sae: L0 = sum_j 1[z_j > theta_j] (gradient to the thresholds through the step's pseudo-derivative), or
  with a target L0 t > 0, (L0 / t - 1)^2 (dictionary_learning's JumpReLU trainer, as SAEBench trains JumpReLU at
  stated L0s), so a sweep can place JumpReLU's L0 on TopK's k values;
* topk_sae, random: 0 (sparsity is structural).

w(t) ramps linearly from 0 over the first ``warmup`` steps (the usual L1 warm-up).

TopK with ``aux_k`` adds AuxK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", section 2.4 and B.1;
EleutherAI sparsify): latents that have not fired for ``dead_tokens`` training tokens are dead; the top
k_aux = min(aux_k, n_dead) of them (by pre-activation, ReLU'd) decode the detached residual e = y - y_hat:

    L_aux = min(n_dead / aux_k, 1) * ||e - W_dec z_aux||^2 / Var(y),     L += aux_weight * L_aux   (1/32, Gao et al.)

(no decoder bias in W_dec z_aux: e is already centred by it). The scale min(n_dead / aux_k, 1) is sparsify's, so a
few dead latents do not get the whole weight.
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
#: jumprelu_sae's weight with a target L0 when SparsityConfig.weight is -1 (dictionary_learning's sparsity_penalty)
TARGET_L0_WEIGHT = 1.0
#: the dead-latent window of Gao et al. and sparsify (10M tokens), the cap of the default window
DEAD_TOKENS_CAP = 10_000_000


@dataclass
class SparsityConfig(Serializable):
    """The objective of an SAE baseline: normalised reconstruction + weight * sparsity penalty."""

    weight: float = -1.0
    """Sparsity weight: L1 (relu_sae, transcoder) or L0 (jumprelu_sae); -1 = the architecture's default."""
    warmup: int = -1
    """Steps of linear ramp of the weight from 0 (-1 = a twentieth of training; 0 = full weight from the start)."""
    target_l0: float = 0.0
    """jumprelu_sae: > 0 = penalise (L0 / target_l0 - 1)^2 instead of L0 (dictionary_learning / SAEBench), default
    weight 1; 0 = plain L0 penalty."""
    aux_weight: float = 1 / 32
    """topk_sae with aux_k: weight of the AuxK dead-latent loss (Gao et al. 2024: 1/32)."""
    dead_tokens: int = -1
    """topk_sae with aux_k: a latent is dead after this many training tokens without firing (-1 = a twentieth of
    the training tokens, at most 10M, the window of Gao et al. and sparsify)."""

    def __post_init__(self) -> None:
        if self.weight < 0 and self.weight != -1:
            raise ValueError("sparsity weight must be >= 0 (or -1 for the default)")
        if self.target_l0 < 0 or self.aux_weight < 0 or (self.dead_tokens < 1 and self.dead_tokens != -1):
            raise ValueError("target_l0 and aux_weight must be >= 0, dead_tokens >= 1 (or -1: from the training length)")

    def resolved_weight(self, architecture: str) -> float:
        if self.weight != -1:
            return self.weight
        if architecture == "jumprelu_sae" and self.target_l0 > 0:
            return TARGET_L0_WEIGHT
        return DEFAULT_WEIGHT.get(architecture, 0.0)

    def dead_window(self, total_tokens: int) -> int:
        """Training tokens without firing after which a latent counts as dead (AuxK)."""
        if self.dead_tokens != -1:
            return self.dead_tokens
        return max(1, min(DEAD_TOKENS_CAP, total_tokens // 20))


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
    aux: torch.Tensor
    """AuxK loss of the batch (0 without AuxK or dead latents), unweighted."""
    dead: torch.Tensor
    """Fraction of latents that count as dead for AuxK at this step (0 without AuxK; logged, no gradient)."""


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch is x [B, d] (target = input) or a pair (x [B, d_in], y [B, d_out])."""
    return batch if isinstance(batch, (tuple, list)) else (batch, batch)


def sparsity_penalty(model: torch.nn.Module, code: torch.Tensor, pre: torch.Tensor, variance: float,
                     target_l0: float = 0.0) -> torch.Tensor:
    """S for a batch: code, pre [B, width] -> scalar (see the module docstring)."""
    arch = model.architecture
    if arch in ("relu_sae", "transcoder"):
        return (code.abs() * model.decoder_norms()).sum(-1).mean() / math.sqrt(variance)
    if arch == "jumprelu_sae":
        if not model.cfg.learn_threshold:
            l0 = (pre > model.threshold).to(pre.dtype).sum(-1).mean()
        else:
            l0 = jump_step(pre, model.threshold, model.cfg.bandwidth).sum(-1).mean()
        return (l0 / target_l0 - 1).pow(2) if target_l0 > 0 else l0
    return code.new_zeros(())


def auxk_loss(model: torch.nn.Module, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
              variance: float) -> torch.Tensor:
    """AuxK (module docstring): pre [B, width] pre-activations, residual [B, d] = y - y_hat (normalised space,
    detached), dead [width] bool -> scalar min(n_dead / k_aux, 1) * ||e - W_dec z_aux||^2 / Var, batch mean."""
    n_dead = int(dead.sum())
    k_aux = model.cfg.aux_latents
    if n_dead == 0 or k_aux == 0:
        return pre.new_zeros(())
    scale = min(n_dead / k_aux, 1.0)
    values, index = torch.where(dead, pre, float("-inf")).topk(min(k_aux, n_dead), dim=-1, sorted=False)
    z = torch.zeros_like(pre).scatter(-1, index, torch.relu(values))
    e_hat = z @ model.decoder.weight.t()
    return scale * (e_hat - residual).pow(2).sum(-1).mean() / variance


def sae_objective(model: torch.nn.Module, batch, cfg: SparsityConfig, variance: float, step: int,
                  total_steps: int) -> SparseTerms:
    """Loss of a batch (raw space; see ``split_batch``); ``variance`` is E||y/s_out - mean||^2 of the training data."""
    x, y = split_batch(batch)
    pre = model.pre_activation(x)
    code = model.activate(pre)
    y_hat = model.decode_normalized(code)
    out_scale = getattr(model, "output_scale", model.input_scale)
    y_n = y / out_scale
    recon = (y_hat - y_n).pow(2).sum(-1).mean() / variance
    ramp = max(1, total_steps // 20) if cfg.warmup < 0 else cfg.warmup
    weight = cfg.resolved_weight(model.architecture) * warmup(step, 0, ramp)
    sparsity = sparsity_penalty(model, code, pre, variance, cfg.target_l0)
    loss = recon + weight * sparsity if weight else recon
    aux = dead_frac = recon.new_zeros(())
    if getattr(model, "tokens_since_fired", None) is not None:  # TopK with AuxK: dead before this batch, then tick
        dead = model.tokens_since_fired >= cfg.dead_window(total_steps * x.shape[0])
        dead_frac = dead.float().mean()
        aux = auxk_loss(model, pre, (y_n - y_hat).detach(), dead, variance)
        if cfg.aux_weight and aux.requires_grad:
            loss = loss + cfg.aux_weight * aux
        model.note_firing(code)
    return SparseTerms(loss, recon, sparsity.detach() if not weight else sparsity,
                       (code != 0).sum(-1).float().mean().detach(), weight, aux.detach(), dead_frac)
