"""Random control: random features whose firing rates match a reference coder's, with a trained linear decoder.

Feature j is a fixed random direction r_j (a buffer, never trained) with a threshold t_j set at the quantile of
r_j . x that makes it fire on the reference coder's fraction p_j of tokens:

    binary:  a_j = 1[r_j . x / s > t_j]          (matched to a BAE: same number of units at the same rates)
    real:    a_j = relu(r_j . x / s - t_j)       (matched to an SAE)

Only the decoder is trained (least squares through the usual trainer), so its reconstruction says how much of the
state random features at these rates can carry. The official code's control (N(0, 1) activations per token,
4d of them) depends on nothing but a seed; this one is a deterministic function of the input, so its features
can also be scored by the interpretation pipeline like any other coder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import Serializable
from .base import Coder, CoderOutput


@dataclass
class RandomConfig(Serializable):
    """A random-feature control."""

    d_in: int = field(default=0, metadata={"cmd": False})
    """Input size d (set from the data)."""
    expansion: int = 4
    """Width = expansion * d_in (ignored when d_code is set)."""
    d_code: int = 0
    """Explicit width; 0 means expansion * d_in."""
    binary: bool = True
    """0/1 features (to match a BAE) instead of relu(r.x - t) magnitudes."""
    seed: int = 0
    """Seed of the random directions."""

    def __post_init__(self) -> None:
        if self.d_in < 0 or self.expansion < 1 or self.d_code < 0:
            raise ValueError("d_in, d_code must be >= 0 and expansion >= 1")

    @property
    def width(self) -> int:
        return self.d_code or self.expansion * self.d_in


RandomOutput = CoderOutput  # reconstruction, code, pre_activation


class RandomControl(Coder):
    architecture = "random"

    def __init__(self, cfg: RandomConfig):
        super().__init__(cfg)
        self.binary = cfg.binary
        g = torch.Generator().manual_seed(cfg.seed)
        directions = torch.randn(cfg.width, cfg.d_in, generator=g)
        self.register_buffer("directions", directions / directions.norm(dim=1, keepdim=True))
        self.register_buffer("thresholds", torch.zeros(cfg.width))
        self.register_buffer("input_scale", torch.ones(()))
        self.decoder = nn.Linear(cfg.width, cfg.d_in)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d] raw inputs -> [..., width] projections on the fixed directions minus the thresholds."""
        return (x / self.input_scale) @ self.directions.T - self.thresholds

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return (pre > 0).to(pre.dtype) if self.cfg.binary else torch.relu(pre)

    @torch.no_grad()
    def match_rates(self, sample: torch.Tensor, rates: torch.Tensor) -> None:
        """Fit the input scale on ``sample`` [N, d] and set each threshold so that feature j fires on a fraction
        ``rates[j]`` of the sample (0 = never, 1 = always); the decoder bias starts at the sample mean."""
        if rates.shape != (self.width,):
            raise ValueError(f"need {self.width} firing rates, got shape {tuple(rates.shape)}")
        self.input_scale.fill_(float((sample.double().pow(2).sum(-1).mean() / sample.shape[-1]).sqrt().clamp_min(1e-12)))
        proj = (sample / self.input_scale) @ self.directions.T  # [N, width]
        sorted_proj, _ = proj.sort(dim=0)
        n = proj.shape[0]
        # fire on rows strictly above the threshold: put it between the ranks that leave round(p N) rows above
        above = torch.round(rates.double().clamp(0, 1) * n).long()
        lo = (n - above - 1).clamp(0, n - 1)
        hi = (n - above).clamp(0, n - 1)
        cols = torch.arange(self.width)
        t = (sorted_proj[lo, cols] + sorted_proj[hi, cols]) / 2
        t = torch.where(above == 0, sorted_proj[-1] + 1.0, t)
        t = torch.where(above == n, sorted_proj[0] - 1.0, t)
        self.thresholds.copy_(t)
        self.decoder.bias.copy_((sample / self.input_scale).mean(0))
