"""Multi-bit decoding (our design; experimental): each unit's pre-activation quantised to k bits (2^k levels).

The paper's second version mentions an optional "more-bit decoding pathway" without publishing its design
(paper.md section 0/1). This is ours:

* levels: L = 2^k; thresholds t_1 = 0 < t_2 < ... < t_{L-1} = ``level_range``, evenly spaced (fixed, not learned:
  the encoder can scale each unit's pre-activation freely, so fixed thresholds lose nothing in expressivity);
  level(z) = #{l : z - t_l > 0}, so level 0 is "off" exactly as a BAE bit is off (z <= 0);
* the decoder reads the dequantised value level / (L - 1) in [0, 1]: a quantised, clipped ReLU;
* surrogate: value = (1 / (L - 1)) * sum_l step(z - t_l), each step with the BAE's surrogate (``step.binarize``),
  so the backward is the sum of the thresholds' surrogates (straight-through for a staircase);
* entropy: each unit's batch distribution over its levels, p_0 = 1 - q_1, p_l = q_l - q_{l+1}, p_{L-1} = q_{L-1}
  with q_l = mean(step(z - t_l)) = P(level >= l); H = sum over units of the categorical entropy (bits);
* k = 1 is today's BAE: one threshold at 0, value = the bit, H = sum of binary entropies (the same operations in the
  same order, so losses and gradients are identical; tests/test_multibit.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal  # noqa: F401 (as Surrogate)

import torch

from ..config import Serializable
from .bae import BAEConfig, BinaryAutoencoder
from .base import column_quantile
from .step import Surrogate, binarize  # noqa: F401 (Surrogate: simple-parsing resolves the inherited annotations here)

MAX_BITS = 8  # level indices are stored as uint8


@dataclass
class LevelConfig(Serializable):
    """Multi-bit decoding (ours, experimental; the paper's design is unpublished)."""

    bits_per_unit: int = 1
    """Bits per unit k: each unit's pre-activation is quantised to 2^k levels and the decoder reads the level
    (1 = the paper's binary BAE, trained by the unchanged fast path; > 1: our multi-bit design, autograd path)."""
    level_range: float = 1.0
    """k > 1: pre-activation (normalised space) at which the top level starts; the 2^k - 1 thresholds are spread
    evenly from 0 to it."""

    def __post_init__(self) -> None:
        if not 1 <= self.bits_per_unit <= MAX_BITS:
            raise ValueError(f"bits_per_unit must be in 1..{MAX_BITS}, got {self.bits_per_unit}")
        if self.level_range <= 0:
            raise ValueError(f"level_range must be positive, got {self.level_range}")


@dataclass
class MultiBitConfig(BAEConfig):
    """Architecture of a multi-bit autoencoder: a BAE whose units have 2^k levels."""

    bits_per_unit: int = 2
    """Bits per unit k (2^k levels)."""
    level_range: float = 1.0
    """Pre-activation (normalised space) at which the top level starts."""

    def __post_init__(self) -> None:
        super().__post_init__()
        LevelConfig(self.bits_per_unit, self.level_range)  # same checks
        if self.init == "topk":
            raise ValueError("init topk cuts one-bit units; a multi-bit autoencoder starts sparse or torch")

    @property
    def start(self) -> str:
        return "sparse" if self.init == "auto" else self.init

    @classmethod
    def from_bae(cls, bae: BAEConfig, levels: LevelConfig) -> "MultiBitConfig":
        return cls(**bae.to_dict(), bits_per_unit=levels.bits_per_unit, level_range=levels.level_range)


def thresholds(bits: int, level_range: float) -> list[float]:
    """The L - 1 = 2^bits - 1 thresholds: 0, then evenly up to ``level_range`` (just [0.0] for one bit)."""
    n = (1 << bits) - 1
    if n == 1:
        return [0.0]
    return [0.0] + [level_range * i / (n - 1) for i in range(1, n)]


def level_steps(pre: torch.Tensor, bits: int, level_range: float, surrogate: str, tau: float) -> list[torch.Tensor]:
    """[L - 1] tensors like ``pre``: step(pre - t_l) in {0, 1} with the surrogate gradient; their sum is the level."""
    return [binarize(pre - t if t else pre, surrogate, tau) for t in thresholds(bits, level_range)]


def dequantize(steps: list[torch.Tensor]) -> torch.Tensor:
    """The decoder's input, level / (L - 1), from the steps (the bit itself, the same tensor, for one step: so the
    decoder, entropy and covariance terms read one node of the graph as in the BAE and gradients add up in the
    same order)."""
    if len(steps) == 1:
        return steps[0]
    value = steps[0]
    for s in steps[1:]:
        value = value + s
    return value / float(len(steps))


def level_probabilities(steps: list[torch.Tensor]) -> torch.Tensor:
    """[m, L] batch distribution of each unit's level from the steps [B, m] each (differentiable)."""
    q = [s.mean(0) for s in steps]  # P(level >= l), l = 1..L-1
    probs = [1 - q[0]] + [q[i] - q[i + 1] for i in range(len(q) - 1)] + [q[-1]]
    return torch.stack(probs, -1)


class MultiBitAutoencoder(BinaryAutoencoder):
    """A BAE whose units carry k bits: ``encode`` returns dequantised values level / (2^k - 1) in [0, 1] (so every
    consumer of codes works unchanged); ``encode_levels`` / ``decode_levels`` use the integer levels."""

    architecture = "multibit_bae"
    binary = False  # codes are levels in [0, 1]; a unit "fires" when its level is above 0

    @property
    def bits_per_unit(self) -> int:
        return self.cfg.bits_per_unit

    @property
    def n_levels(self) -> int:
        return 1 << self.cfg.bits_per_unit

    @torch.no_grad()
    def sparse_start(self, x: torch.Tensor, rate: float) -> None:
        """The BAE's sparse start (each unit fires, level >= 1, on a fraction ``rate`` of the rows x [n, d]), then each
        unit's weights and bias scaled so that its pre-activation reaches the top level on a tenth of those rows:
        the firing rows spread over the levels instead of all sitting in the first one (which would make a k-bit
        unit start as a weak 1-bit unit)."""
        super().sparse_start(x, rate)
        pre = self.encoder(x[:8192] / self.input_scale)  # [n, d']
        top = column_quantile(pre.float(), 1 - rate / 10).clamp_min(1e-6)
        factor = self.cfg.level_range / top
        self.encoder.weight.mul_(factor[:, None])
        if self.encoder.bias is not None:
            self.encoder.bias.mul_(factor)

    def steps(self, pre: torch.Tensor) -> list[torch.Tensor]:
        return level_steps(pre, self.cfg.bits_per_unit, self.cfg.level_range, self.cfg.surrogate, self.cfg.tau)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return dequantize(self.steps(pre))

    @torch.no_grad()
    def encode_levels(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d] raw inputs -> [..., d'] uint8 levels in 0..2^k - 1."""
        pre = self.pre_activation(x)
        level = torch.zeros(pre.shape, dtype=torch.uint8, device=pre.device)
        for t in thresholds(self.cfg.bits_per_unit, self.cfg.level_range):
            level += (pre - t > 0).to(torch.uint8)  # the forward of the step, threshold by threshold
        return level

    def levels_to_values(self, levels: torch.Tensor) -> torch.Tensor:
        return levels.float() / float(self.n_levels - 1)

    def decode_levels(self, levels: torch.Tensor) -> torch.Tensor:
        """[..., d'] integer levels -> [..., d] reconstruction in the raw space."""
        return self.decode(self.levels_to_values(levels))
