"""Binary Autoencoder: h1 = step(W_in x / s + b_in), x_hat = s (W_out h1 + b_out).

``s`` is a stored input scale (a scalar buffer, 1 until fitted) chosen so the normalised inputs have
E||x/s||^2 = d; it makes one set of loss weights work whatever the magnitude of the hidden states.
Callers always see the original space: ``encode`` takes raw states, ``decode`` returns raw states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .base import Coder, CoderOutput, column_quantile
from .step import Surrogate, binarize
from ..config import Serializable


@dataclass
class BAEConfig(Serializable):
    """Architecture of a Binary Autoencoder."""

    d_in: int = field(default=0, metadata={"cmd": False})  # set from the data, never a CLI option
    """Hidden size d of the vectors to encode."""
    expansion: int = 4
    """Code size d' = expansion * d (ignored when d_code is set)."""
    d_code: int = 0
    """Explicit code size d'; 0 means expansion * d_in."""
    encoder_bias: bool = True
    """Learnable encoder bias b_in (the official code has it; the paper's equation does not)."""
    surrogate: Surrogate = "sigmoid"
    """Backward of the step: identity (straight-through), sigmoid, paper (x(1-x)), official (g(1-g))."""
    tau: float = 0.3
    """Bandwidth of the sigmoid surrogate, in units of the normalised pre-activation (inputs scaled to E||x||^2 = d)."""
    init: Literal["auto", "sparse", "topk", "torch"] = "auto"
    """Starting point: auto (sparse, except that ``bitlens synth`` takes topk for its superposed family and sparse
    for its dense planted codes, on which TopK latents split fair bits); sparse (unit-norm encoder rows tied to the
    decoder directions, each unit's bias at the (1 - init_rate) quantile of its pre-activation, so about init_rate
    of the units fire at step 0); topk (the sparse start, then every latent that a TopK SAE fitted to the start
    sample uses becomes a unit: its directions, cut where one bit codes its activation best); or torch (PyTorch's
    default uniform init of both layers, zero-mean biases: the start before issue 12, for ablations)."""
    init_rate: float = 0.03
    """With init sparse: fraction of the training rows on which each unit fires at step 0; with init topk also
    the SAE's k = init_rate * d' active latents per row."""
    init_steps: int = 1000
    """With init topk: Adam steps (batch 512) of the TopK SAE fitted to the start sample."""

    def __post_init__(self) -> None:
        if self.d_in < 0 or self.expansion < 1 or self.d_code < 0:
            raise ValueError("d_in, d_code must be >= 0 and expansion >= 1")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if self.init not in ("auto", "sparse", "topk", "torch"):
            raise ValueError(f"unknown init {self.init!r}; choose auto, sparse, topk or torch")
        if self.init_steps < 1:
            raise ValueError(f"init_steps must be >= 1, got {self.init_steps}")
        if not 0 < self.init_rate < 1:
            raise ValueError(f"init_rate must be in (0, 1), got {self.init_rate}")

    @property
    def width(self) -> int:
        return self.d_code or self.expansion * self.d_in

    @property
    def start(self) -> str:
        """The starting point ``init`` names (auto resolved)."""
        return AUTO_INIT if self.init == "auto" else self.init


AUTO_INIT = "sparse"
"""The start that ``init = auto`` means outside ``bitlens synth``."""


BAEOutput = CoderOutput  # the BAE's forward output: reconstruction, code, pre_activation


class BinaryAutoencoder(Coder):
    architecture = "bae"
    binary = True  # codes are {0, 1}; interpretation and statistics read "fires" as code == 1

    def __init__(self, cfg: BAEConfig):
        super().__init__(cfg)
        self.encoder = nn.Linear(cfg.d_in, cfg.width, bias=cfg.encoder_bias)
        self.decoder = nn.Linear(cfg.width, cfg.d_in, bias=True)
        # W_out [d, d'] is stored column-major (strides (1, d)): the training step reads W_out^T row by row (sparse
        # decoder) and produces dL/dW_out^T, so this layout spares two d x d' transposes per step. Same values.
        self.decoder.weight = nn.Parameter(self.decoder.weight.detach().t().contiguous().t())
        self.register_buffer("input_scale", torch.ones(()))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """[..., d'] pre-activations -> binary codes (0.0/1.0) carrying the surrogate gradient."""
        return binarize(pre, self.cfg.surrogate, self.cfg.tau)

    @torch.no_grad()
    def sparse_start(self, x: torch.Tensor, rate: float) -> None:
        """The sparse start on a sample x [n, d] of raw rows (input scale already fitted).

        Encoder rows become the unit-norm decoder directions (the decoder keeps its random init), and each unit's
        bias is set at the (1 - rate) quantile of its pre-activation on x, so each unit fires on a fraction ``rate``
        of the rows at step 0. Without it (PyTorch's init) about half of the units fire on every row and a strong
        entropy price first has to switch most of them off, which leaves many constant-on or dead.
        """
        direction = self.decoder.weight.t()  # [d', d]
        rows = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.encoder.weight.copy_(rows)
        pre = (x[:8192] / self.input_scale) @ rows.t()  # [n, d']
        threshold = column_quantile(pre.float(), 1 - rate)
        if self.encoder.bias is not None:
            self.encoder.bias.copy_(-threshold)

    @torch.no_grad()
    def fit_input_scale(self, x: torch.Tensor) -> float:
        """Set the scale s so that E||x/s||^2 = d on the sample x [N, d]; returns s."""
        scale = (x.double().pow(2).sum(-1).mean() / x.shape[-1]).sqrt().clamp_min(1e-12)
        self.input_scale.fill_(float(scale))
        return float(scale)
