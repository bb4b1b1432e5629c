"""Training configuration: the objective and the optimisation loop.

Target-distortion training (issue 12): with ``target_fvu = F > 0`` (the default) the weights below are only the
starting point; both are scaled by a multiplier that dual ascent adapts so the running training FVU settles at F
(``dual.py``), i.e. the code's entropy (+ covariance) is minimised subject to FVU <= F. ``target_fvu = 0`` trains
with the fixed weights as given.

Two objective presets:

* ``scale_free`` (default): inputs divided by a stored scalar so E||x||^2 = d;
  L = recon/Var + w_e(t) * H / d' + w_c(t) * D / (d'(d'-1)), with recon the squared error per vector and Var the
  data's total variance (so the first term is the FVU), H the minibatch entropy in bits summed over units and D the
  covariance penalty. One set of weights then works across d, d' and activation scale.
* ``paper``: the official code's raw objective, L = MSE_per_element + w_e(epoch) * H + w_c * D with w = 1e-7, no
  input scaling, entropy switched on after 500 epochs, covariance from the start, ``official`` surrogate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from ..config import Serializable
from .dual import CONTROLLER_STEPS

Preset = Literal["scale_free", "paper"]

DEFAULT_TARGET_FVU = 0.2
"""Default target FVU of every command that trains a BAE on LLM hidden states (train, demo, compare, entropy).
Chosen, not fitted: the middle of the FVUs the fixed weights reached on the demo store (0.13-0.59); a BAE of d' = 4d
reached 0.206 there in 1000 steps (BENCHMARKS.md, issue 12)."""
TARGET_TOLERANCE = 0.01
"""A run trained to a target FVU F has reached it when its held-out FVU is within F +- this (issue 12's bound);
otherwise its bits are not a measurement at F and the run says so."""
SYNTH_TARGET_FVU = 0.02
"""Default target of `bitlens synth` above each data set's floor (its noise floor, or for codes in superposition the
FVU of the best linear-threshold readout of the true bits, ``analysis.readout``): a noise-free planted code is reproduced
exactly at FVU 0, and losing one fair bit of r <= 12 costs at least 1/12 of the variance, far above it."""


@dataclass
class LossConfig(Serializable):
    """The objective."""

    preset: Preset = "scale_free"
    """scale_free (normalised inputs, FVU-like recon, entropy per unit, covariance per pair) or paper (raw official)."""
    target_fvu: float = DEFAULT_TARGET_FVU
    """Target FVU F (scale_free only; --preset paper sets 0): minimise entropy + covariance subject to FVU <= F,
    both weights scaled by a multiplier adapted by dual ascent on the running training FVU (re-anchored on held-out
    rows: target_on). 0 = fixed weights."""
    entropy_weight: float = 1.0
    """Weight of the entropy term (per unit of d' for scale_free; raw bits for paper); with a target FVU, the
    starting weight (the multiplier then adapts it)."""
    cov_weight: float = 100.0
    """Weight of the covariance term (per off-diagonal pair for scale_free; raw sum for paper); with a target FVU
    the multiplier scales it together with the entropy weight, so only their ratio is fixed."""
    dual_lr: float = -1.0
    """Target FVU: step of the log-multiplier per training step and unit of relative error (FVU_run - F) / F;
    -1 = 10 / min(total steps, 1000) (the controller's time scale follows the run up to 1000 steps)."""
    fvu_horizon: int = -1
    """Target FVU: steps of the moving average of the training FVU that drives the multiplier; -1 = a thirtieth
    of min(training steps, 1000) (at least 10)."""
    controller_span: int = CONTROLLER_STEPS
    """Target FVU: the longest time scale of the controller, in steps: dual_lr and fvu_horizon of -1 follow
    min(training steps, this); 0 = the whole run. 1000 on LLM states (a longer one overshot and never came back);
    `synth` uses 0, because a noise-free planted code sits at FVU 0, below any target, so the weight rises for as
    long as training lasts, and rising fast it ends by destroying a true bit (r = 2: one bit lost at weight 18,767)."""
    target_on: Literal["validation", "training"] = "validation"
    """Target FVU: the rows whose FVU the target holds. validation = the held-out rows the run reports on: every
    tenth of the controller's time scale the FVU of up to 8192 of them re-anchors the running training FVU that
    drives the multiplier (training = that running FVU alone; held-out documents may then end 0.01-0.06 above)."""
    prune: bool = True
    """Target FVU: after training, refit the decoder by least squares on training rows and drop the units that the
    target does not need (greedy backward elimination while the rows' FVU stays <= F; training/prune.py), so the
    code is not left with redundant units that gradient descent cannot remove. Logged in pruning.json."""
    prune_rows: int = 65536
    """Target FVU: training rows on which the decoder is refitted and units are pruned."""
    prune_check: Literal["validation", "training"] = "validation"
    """Target FVU: rows that calibrate the pruning budget (the refit's gap): validation = the held-out rows the run
    reports its FVU and bits on (they decide how many units go, so the reported FVU sits at the target); training =
    a held-back fifth of the pruning rows (no held-out data used; held-out documents may then be off by +-0.02)."""
    keep_feasible: bool = True
    """Target FVU: a run whose last held-out FVU is above the target + 0.01 returns instead its evaluation with the
    fewest bits that was within that bound (kept in the checkpoint; training/feasible.py), and says so. A noise-free
    planted code sits at FVU 0, so the controller keeps raising the price of a bit until a true bit breaks: at d =
    512 after the exact code was found, in the LR's final decay, leaving no steps to recover."""
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
    compile: bool = False
    """BAE: fuse the elementwise work of the training step with torch.compile (generated C++ on CPU; seconds of
    compiling per process, cached on disk by torch; falls back to eager with a notice where compiling fails).
    Off by default: not measured faster on a 2-core AVX2 CPU, where GEMMs take ~90% of the step (BENCHMARKS.md)."""

    #: values that reproduce a checkpoint saved before a field existed (it was trained without the option)
    LEGACY: ClassVar[dict[str, Any]] = {"target_on": "training", "keep_feasible": False}

    def __post_init__(self) -> None:
        if self.preset not in ("scale_free", "paper"):
            raise ValueError(f"unknown preset {self.preset!r}; choose scale_free or paper")
        if self.entropy_weight < 0 or self.cov_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError("warmup_fraction must be in [0, 1)")
        if not 0 <= self.target_fvu < 1:
            raise ValueError(f"target_fvu must be in [0, 1) (0 = fixed weights), got {self.target_fvu}")
        if self.target_fvu > 0 and self.entropy_weight <= 0:
            raise ValueError("target_fvu scales the entropy weight, so it must be > 0")
        if (self.dual_lr < 0 and self.dual_lr != -1) or (self.fvu_horizon < 1 and self.fvu_horizon != -1):
            raise ValueError("dual_lr must be >= 0 and fvu_horizon >= 1 (or -1: set from the training length)")
        if self.controller_span < 0:
            raise ValueError("controller_span must be >= 0 (0 = the whole run)")
        if self.target_on not in ("validation", "training"):
            raise ValueError("target_on must be validation or training")
        if self.prune_check not in ("validation", "training"):
            raise ValueError("prune_check must be validation or training")
        if self.prune_rows < 2:
            raise ValueError("prune_rows must be >= 2")


# A preset is a set of defaults for the fields of BAEConfig, TrainConfig and LossConfig (their names do not clash).
# The CLI installs them as option defaults before parsing, so options typed by the user always win.
PRESETS: dict[str, dict[str, object]] = {
    "scale_free": {},
    # the official recipe: raw inputs and per-element MSE, weights 1e-7, entropy switched on (hard) after a quarter
    # of training (500 of the official 2000 epochs), covariance from the start, the official surrogate, Adam 5e-4
    # at constant LR
    "paper": {"surrogate": "official", "lr": 5e-4, "lr_decay": 0.0, "entropy_weight": 1e-7, "cov_weight": 1e-7,
              "warmup_fraction": 0.25, "entropy_ramp": 0, "cov_start": 0, "cov_ramp": 0, "target_fvu": 0.0,
              "init": "torch", "revive_every": 0},
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


def llm_loss(target_fvu: float = DEFAULT_TARGET_FVU) -> LossConfig:
    """The objective of every command that trains BAEs on LLM hidden states: target FVU (default
    ``DEFAULT_TARGET_FVU``), starting from the weights 1 / 100 of the fixed-weight sweep (`bench/loss_weights.py`)."""
    return LossConfig(target_fvu=target_fvu, entropy_weight=1.0, cov_weight=100.0)


SUPERPOSED_LOSS = {"target_fvu": 0.01, "target_on": "validation"}
"""The superposed family's own defaults in `bitlens synth` (issue 12, sixth session; 131,072 rows, TopK start,
d = 64, r = 128): its rarest features' thresholds fit the training rows, so held at the training FVU the held-out
FVU ended 0.006-0.011 above the target and the bits 0.52-0.66 below the truth (tolerance 0.51); held on held-out
rows at 0.01 above the floor: 16.75 bits for a truth of 17.09 at held-out FVU 0.0234 (target 0.0218)."""


def synth_loss(target_fvu: float = SYNTH_TARGET_FVU, family: str = "fair") -> LossConfig:
    """The objective of `bitlens synth`: the same mechanism with the synthetic target (above the data set's floor),
    starting from the weights 10 / 1000 that the fixed-weight benchmark was calibrated with (BENCHMARKS.md);
    ``family`` superposed takes ``SUPERPOSED_LOSS`` instead of ``target_fvu`` and the training-row target.

    The target holds on the training rows (``target_on="training"``): planted rows are drawn i.i.d., so held-out and
    training rows share one distribution and a measured gap is noise, and near a noise-free code's FVU of 0 that
    noise is larger than the target (r = 4: gaps of -0.02 to +0.16 between calibrations, and a true bit lost at the
    end of the run)."""
    loss = LossConfig(target_fvu=target_fvu, entropy_weight=10.0, cov_weight=1000.0, controller_span=0,
                      target_on="training")
    return replace(loss, **SUPERPOSED_LOSS) if family == "superposed" else loss


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
    """cpu, cuda, cuda:N or auto (cuda when available); under torchrun cuda is each process's own GPU."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Encoder matmul precision: bf16 runs the encoder under autocast (for GPUs; the bits stay exact 0/1 and the
    decoder, losses and covariance stay fp32, but a pre-activation within bf16 rounding of 0 may flip its bit)."""
    revive_every: int = -1
    """BAE only: every this many steps re-initialise the units that are dead or constant-on on a sample of training
    rows, towards rows with high reconstruction error (logged in revival.jsonl). -1 = every tenth of training
    (default); 0 = never (the paper preset). On the demo store's layer 15 (target 0.2, 8000 steps) it gave 377 bits
    and 33% dead units against 495 bits and 63% dead without it, at the same FVU (BENCHMARKS.md, issue 12)."""
    revive_until: float = 0.5
    """Fraction of training after which no unit is revived (revived units need steps to settle, and the target's
    controller steps to adapt to them)."""
    revive_rows: int = 8192
    """Training rows on which units are judged dead or constant-on and from which revived units are drawn."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def settings(self) -> dict:
        """The fields that define the training, without those that only say where it runs and how it is watched
        (device, progress, evaluation and checkpoint cadence): what makes two runs the same run."""
        watch = {"device", "precision", "progress", "eval_every", "eval_tokens", "checkpoint_every"}
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
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {self.precision!r}")
        if self.revive_every < -1 or not 0 <= self.revive_until <= 1 or self.revive_rows < 2:
            raise ValueError("revive_every must be >= -1, revive_until in [0, 1], revive_rows >= 2")
