"""Which objective, loss config and initialisation each architecture trains with.

The trainer is architecture-agnostic: it asks this registry for the pure loss function of the coder it trains
(``objective(model, batch, loss_cfg, variance, step, total_steps) -> NamedTuple`` whose first field ``loss`` is
back-propagated and whose other tensor fields are logged as ``train/<name>``), and for the loss config class to
rebuild on resume. The BAE keeps its fused fast step (``objective.bae_objective``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


from ..coders.registry import REGISTRY
from ..io import BitlensError
from .config import LossConfig
from .multibit_objective import multibit_objective
from .objective import bae_objective
from .sae_objective import SparsityConfig, sae_objective


@dataclass(frozen=True)
class ObjectiveSpec:
    objective: Callable[..., Any]
    """(model, batch, loss_cfg, variance, step, total_steps) -> NamedTuple of loss terms (first field: loss)."""
    loss_config: type
    """Serializable dataclass of the objective's settings."""
    log_names: dict[str, str] = field(default_factory=dict)
    """Renames of term fields in the metrics log (e.g. the BAE's entropy is logged as entropy_bits)."""
    global_batch: bool = False
    """The objective has batch statistics and takes ``world=`` (``distributed.World``): under torchrun it computes
    the global batch's terms and gradients are summed over ranks. Otherwise (batch means) gradients are averaged."""
    local_only: bool = False
    """The objective has batch statistics but no global-batch implementation yet: refused under torchrun (averaged
    per-rank entropies would be another objective)."""


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "bae": ObjectiveSpec(bae_objective, LossConfig, {"entropy": "entropy_bits"}, global_batch=True),
    "multibit_bae": ObjectiveSpec(multibit_objective, LossConfig, {"entropy": "entropy_bits"}, local_only=True),
    **{arch: ObjectiveSpec(sae_objective, SparsityConfig)
       for arch in ("relu_sae", "topk_sae", "jumprelu_sae", "transcoder", "random")},
}


def register_objective(architecture: str, spec: ObjectiveSpec) -> None:
    OBJECTIVES[architecture] = spec


def objective_for(architecture: str) -> ObjectiveSpec:
    if architecture not in OBJECTIVES:
        raise BitlensError(f"no training objective for architecture {architecture!r}; "
                           f"trainable: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[architecture]


def default_coder_config(architecture: str) -> Any:
    if architecture not in REGISTRY:
        raise BitlensError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[architecture][1]()
