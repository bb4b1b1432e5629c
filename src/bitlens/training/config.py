"""Training configuration: the objective and the optimisation loop.

Two objective presets:

* ``scale_free`` (default): inputs divided by a stored scalar so E||x||^2 = d;
  L = recon/Var + w_e(t) * H / d' + w_c(t) * D / (d'(d'-1)), with recon the squared error per vector and Var the
  data's total variance (so the first term is the FVU), H the minibatch entropy in bits summed over units and D the
  covariance penalty. One set of weights then works across d, d' and activation scale.
* ``paper``: the official code's raw objective, L = MSE_per_element + w_e(epoch) * H + w_c * D with w = 1e-7, no
  input scaling, entropy switched on after 500 epochs, covariance from the start, ``official`` surrogate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import Serializable

Preset = Literal["scale_free", "paper"]


@dataclass
class LossConfig(Serializable):
    """The objective."""

    preset: Preset = "scale_free"
    """scale_free (normalised inputs, FVU-like recon, entropy per unit, covariance per pair) or paper (raw official)."""
    entropy_weight: float = 10.0
    """Weight of the entropy term (per unit of d' for scale_free; raw bits for paper)."""
    cov_weight: float = 1000.0
    """Weight of the covariance term (per off-diagonal pair for scale_free; raw sum for paper)."""
    entropy_threshold: float = 0.0
    """Entropy floor in bits: below it the entropy term is a gradient-free 0 (official option; 0 = off)."""
    entropy_start: int = -1
    """Step at which the entropy term switches on (-1 = after --warmup-fraction of training: reconstruction first)."""
    warmup_fraction: float = 0.1
    """Fraction of training that is reconstruction only, when entropy_start is -1 (the paper preset: a quarter)."""
    entropy_ramp: int = -1
    """Steps of linear ramp once on (0 = hard switch; -1 = a fifth of the training steps)."""
    cov_start: int = -1
    """Step at which the covariance term switches on (-1 = with the entropy term)."""
    cov_ramp: int = -1
    """Steps of linear ramp for the covariance term (0 = hard switch; -1 = a fifth of the training steps)."""

    def __post_init__(self) -> None:
        if self.preset not in ("scale_free", "paper"):
            raise ValueError(f"unknown preset {self.preset!r}; choose scale_free or paper")
        if self.entropy_weight < 0 or self.cov_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError("warmup_fraction must be in [0, 1)")


# A preset is a set of defaults for the fields of BAEConfig, TrainConfig and LossConfig (their names do not clash).
# The CLI installs them as option defaults before parsing, so options typed by the user always win.
PRESETS: dict[str, dict[str, object]] = {
    "scale_free": {},
    # the official recipe: raw inputs and per-element MSE, weights 1e-7, entropy switched on (hard) after a quarter
    # of training (500 of the official 2000 epochs), covariance from the start, the official surrogate, Adam 5e-4
    # at constant LR
    "paper": {"surrogate": "official", "lr": 5e-4, "lr_decay": 0.0, "entropy_weight": 1e-7, "cov_weight": 1e-7,
              "warmup_fraction": 0.25, "entropy_ramp": 0, "cov_start": 0, "cov_ramp": 0},
}


def apply_preset(name: str, *configs):
    """The configs with preset ``name``'s values in place of their fields (for the Python API; fields not in the
    preset keep their values). Returns the configs in the order given."""
    import dataclasses

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    values = {**PRESETS[name], "preset": name}
    return tuple(dataclasses.replace(c, **{k: v for k, v in values.items()
                                           if k in {f.name for f in dataclasses.fields(c)}}) for c in configs)


def llm_loss() -> LossConfig:
    """The scale_free weights for BAEs on LLM hidden states (d' in the thousands).

    The class defaults are calibrated on the synthetic benchmark (d' ~ 256); on LLM states they price a bit too
    high and leave most units dead. Commands that train on a store's LLM states use these instead; the sweep behind
    them is `bench/loss_weights.py` (BENCHMARKS.md, "Loss weights on LLM states")."""
    return LossConfig(entropy_weight=1.0, cov_weight=100.0)


@dataclass
class TrainConfig(Serializable):
    """The optimisation loop."""

    steps: int = 8000
    """Optimiser steps (ignored when epochs > 0)."""
    epochs: float = 0.0
    """Full passes over the training rows; > 0 overrides steps."""
    batch_size: int = 512
    """Rows per step. The entropy and covariance terms are batch statistics, so keep this >= 256."""
    lr: float = 1e-3
    """Adam learning rate."""
    lr_decay: float = 0.3
    """Fraction of training at the end over which the LR follows a cosine to lr * lr_final (0 = constant LR)."""
    lr_final: float = 0.1
    """Final LR as a fraction of lr."""
    seed: int = 0
    """Seed for initialisation, the train/validation split and batch order."""
    val_fraction: float = 0.1
    """Fraction of rows (of documents, for a store) held out for validation."""
    eval_every: int = 500
    """Evaluate on the validation rows and log metrics every this many steps."""
    eval_tokens: int = 65536
    """At most this many validation rows (tokens) per evaluation."""
    checkpoint_every: int = 2000
    """Write a resumable checkpoint every this many steps (and at the end, and on Ctrl-C)."""
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto (cuda when available)."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def settings(self) -> dict:
        """The fields that define the training, without those that only say where it runs and how it is watched
        (device, progress, evaluation and checkpoint cadence): what makes two runs the same run."""
        watch = {"device", "progress", "eval_every", "eval_tokens", "checkpoint_every"}
        return {k: v for k, v in self.to_dict().items() if k not in watch}

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (the covariance needs two rows)")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1)")
        if self.steps < 1 and self.epochs <= 0:
            raise ValueError("set steps >= 1 or epochs > 0")
        if self.lr <= 0:
            raise ValueError("lr must be positive")
