"""Settings of `bitlens compare`: the command's config (``CompareConfig``) and each coder's plan (its default
coder / train / loss settings with the JSON ``--config`` file's overrides applied); ``compare.py`` runs them."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import Serializable
from ..io import BitlensError, read_json_object
from ..training.config import DEFAULT_TARGET_FVU

CoderName = Literal["bae", "relu_sae", "topk_sae", "jumprelu_sae", "random", "transcoder"]
CODERS: tuple[str, ...] = typing.get_args(CoderName)
#: default optimiser steps (batch 512) per coder, chosen so the whole comparison fits in 30 minutes on 2 CPU cores
DEFAULT_STEPS = {"bae": 3000, "relu_sae": 2500, "topk_sae": 2500, "jumprelu_sae": 2500, "random": 1000,
                 "transcoder": 2500}
Variant = Literal["mlp", "official"]


@dataclass
class CompareConfig(Serializable):
    """Settings of `bitlens compare`."""

    store: str
    """Activation store written by `bitlens extract`."""
    layer: int | None = None
    """Layer L of the store (hidden_states[L]); none = the store's only layer."""
    out: str = "runs/cmp"
    """Output folder (compare.json, compare.md, frequencies.png, units.png, coders/, splice.json)."""
    config: str = ""
    """JSON file overriding per-coder settings (keys: coder names, each with coder / train / loss objects; and splice)."""
    coders: list[CoderName] = field(default_factory=lambda: list(CODERS))
    """Which coders to compare (random needs bae)."""
    transcoder_variant: Variant = "mlp"
    """mlp: MLP input -> MLP output of block L (field standard); official: MLP input of block L-1 -> hidden_states[L], identity activation."""
    eval_tokens: int = 25000
    """Held-out tokens for the statistics."""
    splice_tokens: int = 4096
    """Next-token predictions per spliced variant (held-out documents); 0 = no splicing."""
    splice_positions: Literal["all", "last"] = "all"
    """Splice at all positions, or the last position only (the official script)."""
    target_fvu: float = DEFAULT_TARGET_FVU
    """Target FVU of the BAE (minimum entropy subject to FVU <= F, by dual ascent); the SAEs keep their sparsity
    weights. 0 = the fixed weights 1 / 100."""
    match_fvu: bool = False
    """Train the SAEs first and the BAE to the median of their held-out FVUs (instead of --target-fvu), so the
    table compares the coders at equal reconstruction (match.py)."""
    steps: int = 0
    """Training steps for every coder (0 = the per-coder defaults: bae 3000, SAEs and transcoder 2500, random 1000)."""
    seed: int = 0
    """Seed of the train/validation split (by document) and of every coder."""
    val_fraction: float = 0.1
    """Fraction of the store's documents held out for the statistics and splicing."""
    device: str = "cpu"
    """Device for training and splicing: cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.coders) - set(CODERS))
        if unknown:
            raise ValueError(f"unknown coder(s) {', '.join(unknown)}; choose from {', '.join(CODERS)}")
        if "random" in self.coders and "bae" not in self.coders:
            raise ValueError("the random control matches the BAE's firing rates: include bae")
        if self.transcoder_variant not in ("mlp", "official"):
            raise ValueError("transcoder_variant must be mlp or official")
        if self.match_fvu:
            from .match import check_match

            check_match(self.coders)


@dataclass
class CoderPlan:
    name: str
    architecture: str
    coder: Any
    train: Any
    loss: Any


def coder_plans(cfg: CompareConfig, overrides: dict[str, Any]) -> list[CoderPlan]:
    """Default settings of each coder, with the config file's overrides applied."""
    from ..coders.random_control import RandomConfig
    from ..coders.sae import SAEConfig
    from ..coders.bae import BAEConfig
    from ..training.config import TrainConfig, llm_loss
    from ..training.sae_objective import SparsityConfig

    plans = []
    for name in cfg.coders:
        steps = cfg.steps or DEFAULT_STEPS[name]
        train = TrainConfig(steps=steps, seed=cfg.seed, eval_every=max(1, steps // 5), eval_tokens=8192,
                            checkpoint_every=max(1, steps // 5), device=cfg.device, progress=cfg.progress)
        if name == "bae":
            coder, loss = BAEConfig(), llm_loss(cfg.target_fvu)
        elif name == "random":
            coder, loss = RandomConfig(seed=cfg.seed), SparsityConfig()
        elif name == "jumprelu_sae":  # at TopK's L0 (issue 14): penalty (L0/k - 1)^2, thresholds start there
            coder = SAEConfig(init_l0=SAEConfig().k)
            loss = SparsityConfig(target_l0=float(coder.init_l0))
        elif name == "transcoder" and cfg.transcoder_variant == "official":
            coder, loss = SAEConfig(activation="identity"), SparsityConfig()
        else:
            coder, loss = SAEConfig(), SparsityConfig()
        extra = overrides.get(name, {})
        bad = sorted(set(extra) - {"coder", "train", "loss"})
        if bad:
            raise BitlensError(f"config for {name}: unknown section(s) {', '.join(bad)} (use coder, train, loss)")
        try:
            coder = type(coder).from_dict({**coder.to_dict(), **extra.get("coder", {})})
            train = type(train).from_dict({**train.to_dict(), **extra.get("train", {})})
            loss = type(loss).from_dict({**loss.to_dict(), **extra.get("loss", {})})
        except (ValueError, TypeError) as e:
            raise BitlensError(f"config for {name}: {e}") from e
        plans.append(CoderPlan(name, name, coder, train, loss))
    return plans


def _load_overrides(path: str) -> dict[str, Any]:
    if not path:
        return {}
    file = Path(path)
    if not file.is_file():
        raise BitlensError(f"config file {path} does not exist")
    data = read_json_object(file)
    unknown = sorted(set(data) - set(CODERS) - {"splice"})
    if unknown:
        raise BitlensError(f"{path}: unknown key(s) {', '.join(unknown)}; use coder names and splice")
    return data
