"""SAE baselines with the BAE's interface: ReLU + L1, TopK, JumpReLU, and the transcoder.

All share one skeleton: ``a = act(W_enc x / s_in + b_enc)``, ``x_hat = s_out (W_dec a + b_dec)``. ``s_in`` and
``s_out`` are stored scalars fitted so that E||x/s||^2 = d (as for the BAE), so the loss weights do not depend on
the scale of the hidden states; callers always see the original space. For an SAE the target is the input and
``s_out = s_in``; a transcoder maps one site (an MLP's input) to another (its output) and fits both.

| architecture   | act(z)                                             | sparsity term (loss config ``weight``)       |
|----------------|----------------------------------------------------|----------------------------------------------|
| ``relu_sae``   | ReLU                                               | L1 of a_j weighted by decoder norms ||d_j||  |
| ``topk_sae``   | ReLU, then keep the k largest (exactly k rows' entries) | none (sparsity is structural)           |
| ``jumprelu_sae`` | z * 1[z > theta_j], theta learned (``jumprelu.py``) | L0 through the step's pseudo-derivative  |
| ``transcoder`` | ReLU (or identity, as the official code)           | L1 as relu_sae                               |

Official-code variants (paper.md section 6) are options: ``topk_relu=False`` (TopK on raw pre-activations, negatives
survive), ``learn_threshold=False`` with ``threshold=0.5`` (the fixed-theta "JumpReLU"), transcoder
``activation="identity"`` (a linear map with L1).

Baselines as the field trains them (issue 14), each with its source:

* ``unit_decoder`` (topk_sae, jumprelu_sae): decoder columns start at unit norm with the encoder tied to their
  transpose, the gradient component parallel to each column is removed before every optimiser step and the columns
  are renormalised after it (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", arXiv 2406.04093, A.1;
  EleutherAI sparsify ``normalize_decoder``; dictionary_learning's JumpReLU trainer). relu_sae keeps free columns
  and weights its L1 by their norms instead (Anthropic's April 2024 update), so it ignores the option.
* ``center_input`` (topk_sae): the encoder reads x - b_dec (Gao et al. 2024 eq. 1; sparsify's ``encode``); without
  it the residual stream's large mean decides which latents win the top k, and the others never fire.
* ``aux_k`` (topk_sae): the AuxK dead-latent loss (Gao et al. 2024 section 2.4 and B.1; sparsify): the model counts
  the training tokens since each latent last fired (a buffer, so a resumed run continues the count), and the
  objective (``training/sae_objective.py``) has the top-``aux_k`` dead latents reconstruct the residual.
* ``init_l0`` (jumprelu_sae): thresholds start where each unit fires on ``init_l0`` of the ``width`` units per row,
  so training begins at the targeted L0 instead of walking the thresholds up by ~lr per step.

A ``cfg.json`` written before these options existed has none of them: it loads with them off (as it was trained).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..config import Serializable
from .base import Coder, CoderOutput, column_quantile
from .jumprelu import jumprelu

TranscoderActivation = Literal["relu", "identity"]


@dataclass
class SAEConfig(Serializable):
    """Architecture of an SAE baseline or transcoder (fields not used by an architecture are ignored)."""

    d_in: int = field(default=0, metadata={"cmd": False})
    """Input size d (set from the data)."""
    d_out: int = field(default=0, metadata={"cmd": False})
    """Output size (0 = d_in; a transcoder's target size)."""
    expansion: int = 4
    """Width = expansion * d_in (ignored when d_code is set); 4 matches the BAE."""
    d_code: int = 0
    """Explicit width; 0 means expansion * d_in."""
    k: int = 32
    """topk_sae: active features per token."""
    topk_relu: bool = True
    """topk_sae: ReLU before TopK (field standard); False = the official code's TopK on raw pre-activations."""
    threshold: float = 0.01
    """jumprelu_sae: initial threshold (normalised pre-activation units); the fixed value when not learned."""
    learn_threshold: bool = True
    """jumprelu_sae: learn the thresholds (False with threshold 0.5 = the official code's fixed-theta variant)."""
    bandwidth: float = 0.05
    """jumprelu_sae: width of the rectangle kernel of the threshold's pseudo-derivative (0.001 as Gemma Scope
    needs far longer training than a few thousand steps: the thresholds barely move and L0 stays in the hundreds)."""
    activation: TranscoderActivation = "relu"
    """transcoder: relu, or identity (the official code's default: a linear map trained with L1)."""
    unit_decoder: bool = True
    """topk_sae, jumprelu_sae: decoder columns kept at unit norm (Gao et al. 2024; sparsify; dictionary_learning).
    relu_sae and transcoder ignore it (their L1 is weighted by the column norms)."""
    aux_k: int = -1
    """topk_sae: dead latents used by the AuxK loss (Gao et al. 2024; -1 = d_in / 2 as sparsify; 0 = no AuxK)."""
    center_input: bool = True
    """topk_sae: the encoder reads x - b_dec (Gao et al. 2024 eq. 1; sparsify), so the data's mean does not decide
    which latents win the top k."""
    init_l0: float = 0.0
    """jumprelu_sae: if > 0, each unit's initial threshold is its pre-activation's (1 - init_l0 / width) quantile on
    the training sample (at least --threshold), so training starts at L0 ~ init_l0; 0 = every threshold at
    --threshold."""

    #: fields a config written before issue 14 lacks, and the value it was trained with
    LEGACY = {"unit_decoder": False, "aux_k": 0, "init_l0": 0.0, "center_input": False}

    @classmethod
    def from_dict(cls, data, drop_extra_fields=False):
        if isinstance(data, dict) and data:  # an older cfg.json: the options it lacks were off when it was trained
            data = {**{k: v for k, v in cls.LEGACY.items() if k not in data}, **data}
        return super().from_dict(data, drop_extra_fields)

    def __post_init__(self) -> None:
        if self.d_in < 0 or self.d_out < 0 or self.expansion < 1 or self.d_code < 0:
            raise ValueError("d_in, d_out, d_code must be >= 0 and expansion >= 1")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.bandwidth <= 0:
            raise ValueError(f"bandwidth must be positive, got {self.bandwidth}")
        if self.activation not in ("relu", "identity"):
            raise ValueError(f"unknown activation {self.activation!r}; choose relu or identity")
        if self.aux_k < -1 or self.init_l0 < 0:
            raise ValueError("aux_k must be >= 0 (or -1: d_in / 2) and init_l0 >= 0")

    @property
    def aux_latents(self) -> int:
        """k_aux of the AuxK loss (0 = off)."""
        return max(1, self.d_in // 2) if self.aux_k == -1 else self.aux_k

    @property
    def width(self) -> int:
        return self.d_code or self.expansion * self.d_in

    @property
    def out_dim(self) -> int:
        return self.d_out or self.d_in


SAEOutput = CoderOutput  # reconstruction, code (activations), pre_activation


class SparseCoder(Coder):
    """Shared skeleton; subclasses define ``activate`` and set ``architecture``."""

    architecture = ""
    binary = False  # activations are real-valued; a feature "fires" when its activation is non-zero
    unit_norm_capable = False  # architectures whose decoder columns are kept at unit norm when cfg.unit_decoder

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.encoder = nn.Linear(cfg.d_in, cfg.width)
        self.decoder = nn.Linear(cfg.width, cfg.out_dim)
        with torch.no_grad():  # decoder starts as the encoder's transpose with short columns; encoder bias 0
            if cfg.out_dim == cfg.d_in:
                self.decoder.weight.copy_(self.encoder.weight.t())
            norm = 1.0 if self.unit_norm else 0.1
            self.decoder.weight.mul_(norm / self.decoder.weight.norm(dim=0, keepdim=True).clamp_min(1e-12))
            if self.unit_norm and cfg.out_dim == cfg.d_in:  # Gao et al.: encoder = decoder^T at init
                self.encoder.weight.copy_(self.decoder.weight.t())
            self.encoder.bias.zero_()
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("output_scale", torch.ones(()))

    @property
    def unit_norm(self) -> bool:
        """Whether the decoder columns are kept at unit norm (the architecture calls for it and the config asks)."""
        return self.unit_norm_capable and self.cfg.unit_decoder

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Unit-norm decoder: remove the gradient component parallel to each (unit) column, so Adam's step moves
        the column along the sphere (sparsify's ``remove_gradient_parallel_to_decoder_directions``)."""
        w = self.decoder.weight
        if self.unit_norm and w.grad is not None:
            w.grad -= w * (w * w.grad).sum(0, keepdim=True)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Unit-norm decoder: put the columns back on the unit sphere after the step."""
        if self.unit_norm:
            w = self.decoder.weight
            w /= w.norm(dim=0, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def fit_scales(self, x: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Set s_in (and s_out from ``target``, else s_out = s_in) so that E||v/s||^2 = dim on the samples [N, *]."""
        def rms(v):
            return float((v.double().pow(2).sum(-1).mean() / v.shape[-1]).sqrt().clamp_min(1e-12))
        self.input_scale.fill_(rms(x))
        self.output_scale.fill_(rms(target) if target is not None else rms(x))

    def decoder_norms(self) -> torch.Tensor:
        """[width] L2 norms of the decoder columns (normalised space)."""
        return self.decoder.weight.norm(dim=0)


class ReLUSAE(SparseCoder):
    architecture = "relu_sae"

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)


class TopKSAE(SparseCoder):
    architecture = "topk_sae"
    unit_norm_capable = True

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        if cfg.aux_latents:  # AuxK's dead-latent clock: training tokens since each latent last fired
            self.register_buffer("tokens_since_fired", torch.zeros(cfg.width, dtype=torch.int64))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d] raw inputs -> [..., width]; with center_input the encoder reads x / s - b_dec."""
        if self.cfg.center_input and self.cfg.out_dim == self.cfg.d_in:
            return self.encoder(x / self.input_scale - self.decoder.bias)
        return super().pre_activation(x)

    @torch.no_grad()
    def note_firing(self, code: torch.Tensor) -> None:
        """Advance the dead-latent clock by a training batch's codes [B, width] (called by the objective)."""
        if hasattr(self, "tokens_since_fired"):
            self.tokens_since_fired += code.shape[0]
            self.tokens_since_fired[(code != 0).any(0)] = 0

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Keep the k largest entries of each row (after ReLU by default), zero the rest. With ReLU, rows with
        fewer than k positive pre-activations keep fewer non-zeros."""
        z = torch.relu(pre) if self.cfg.topk_relu else pre
        k = min(self.cfg.k, z.shape[-1])
        values, index = z.topk(k, dim=-1, sorted=False)
        return torch.zeros_like(z).scatter(-1, index, values)


class JumpReLUSAE(SparseCoder):
    architecture = "jumprelu_sae"
    unit_norm_capable = True

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        theta = torch.full((cfg.width,), float(cfg.threshold))
        if cfg.learn_threshold:
            self.threshold = nn.Parameter(theta)
        else:
            self.register_buffer("threshold", theta)

    @torch.no_grad()
    def fit_scales(self, x: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """The scales, then (with ``init_l0``) each threshold at the quantile where its unit fires on a fraction
        init_l0 / width of the sample x [N, d]."""
        super().fit_scales(x, target)
        if self.cfg.init_l0 > 0:
            rate = min(self.cfg.init_l0 / self.cfg.width, 1.0)
            pre = self.pre_activation(x[:8192].float())
            theta = column_quantile(pre, 1 - rate).clamp_min(self.cfg.threshold)
            self.threshold.copy_(theta)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if not self.cfg.learn_threshold:
            return pre * (pre > self.threshold).to(pre.dtype)
        return jumprelu(pre, self.threshold, self.cfg.bandwidth)


class Transcoder(SparseCoder):
    """Maps one site to another (default: block L's MLP input to its output). Which sites is a data choice made
    by the caller (``bitlens compare --transcoder-variant``); the module only knows d_in, d_out."""

    architecture = "transcoder"

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre) if self.cfg.activation == "relu" else pre
