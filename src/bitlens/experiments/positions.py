"""`bitlens entropy positions`: entropy of hidden states against token position, per layer.

Rows come from a store whose ``position`` column is the index of the token in its model input (every input starts at
a sentence start; position 0, the attention sink, is not stored by default). The extractor packs whole sentences up
to ``--max-seq-len`` tokens, so inputs end a little short of it: extract with a max_seq_len well above the largest
position wanted (e.g. 129 for positions up to 96). For each layer and each requested position t, the states at t
over many inputs are a set; its entropy is measured in one of two ways:

* ``per_position`` (the paper's protocol): one BAE per (layer, position), trained on that position's states only;
  the entropy is the BAE estimate over all of that position's sampled rows, the FVU is on a held-out tenth.
* ``shared`` (cheaper): one BAE per layer trained on all positions; each position's entropy is that of its rows'
  codes under the shared code book.

Every position gets the same number of rows (the smallest count among the requested positions, at most
``max_rows``), so the small-sample bias of the estimate is the same along the curve. The saturation position and
plateau come from ``bitlens.analysis.saturation.detect_saturation`` on the entropy curve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Serializable
from ..io import BitlensError, write_json, write_manifest
from ..training.config import DEFAULT_TARGET_FVU, llm_loss
from ..analysis.saturation import detect_saturation
from .unit_bae import UnitTraining, fit_unit

log = logging.getLogger(__name__)

DEFAULT_POSITIONS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96]


@dataclass
class PositionsConfig(Serializable):
    """Settings of `bitlens entropy positions`."""

    store: str
    """Activation store whose inputs outrun the largest position (e.g. `bitlens extract --max-seq-len 129 ...`)."""
    out: str = "runs/positions"
    """Output folder: positions.json, positions.png and the BAE runs (finished units are not redone)."""
    layers: list[int] = field(default_factory=list)
    """Layers to analyse (default: every layer of the store)."""
    positions: list[int] = field(default_factory=lambda: list(DEFAULT_POSITIONS))
    """Token positions to analyse."""
    all_positions: bool = False
    """Analyse every stored position with enough tokens instead of the listed positions."""
    mode: Literal["per_position", "shared"] = "per_position"
    """per_position (one BAE per layer and position, the paper's protocol) or shared (one BAE per layer)."""
    steps: int = 100
    """Training steps of each per-position BAE."""
    shared_steps: int = 600
    """Training steps of each shared (per-layer) BAE."""
    target_fvu: float = DEFAULT_TARGET_FVU
    """Target FVU of every BAE (minimum entropy subject to FVU <= F, by dual ascent), so all bits are read at one
    stated reconstruction; 0 = the fixed weights 1 / 100."""
    batch_size: int = 512
    """Rows per training step."""
    max_tokens_per_position: int = 4096
    """At most this many tokens per position (every position gets the same number)."""
    min_tokens_per_position: int = 256
    """Positions with fewer stored tokens than this are skipped."""
    expansion: int = 4
    """Code size d' = expansion * d."""
    rel_tol: float = 0.1
    """Saturation band: this fraction of the curve's rise around the plateau."""
    abs_tol: float = 0.5
    """Saturation band: at least this many bits around the plateau."""
    seed: int = 0
    """Seed of the row sampling, splits and training."""
    device: str = "cpu"
    """Device for the BAEs: cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.mode not in ("per_position", "shared"):
            raise ValueError(f"mode must be per_position or shared, not {self.mode!r}")
        if (self.steps < 1 or self.shared_steps < 1 or self.min_tokens_per_position < 4
                or self.max_tokens_per_position < self.min_tokens_per_position):
            raise ValueError("steps must be >= 1, min_tokens_per_position >= 4 and max_tokens_per_position >= "
                             "min_tokens_per_position")
        if not self.all_positions and (not self.positions or min(self.positions) < 0):
            raise ValueError("positions needs at least one position, all >= 0")

    def position_list(self, available: np.ndarray) -> list[int]:
        if self.all_positions:
            return [int(p) for p in available]
        return sorted(set(self.positions))


def _sample_positions(store, cfg: PositionsConfig) -> tuple[dict[int, np.ndarray], int]:
    """Store row indices per position (same count for each) and that count."""
    pos_col = store.meta[:, 3]
    counts = np.bincount(pos_col)
    available = np.flatnonzero(counts >= cfg.min_tokens_per_position)
    wanted = cfg.position_list(available)
    kept = [p for p in wanted if p < len(counts) and counts[p] >= cfg.min_tokens_per_position]
    dropped = sorted(set(wanted) - set(kept))
    if dropped:
        log.warning("positions %s have fewer than %d tokens in the store; skipped", dropped,
                    cfg.min_tokens_per_position)
    if len(kept) < 2:
        raise BitlensError(f"store {store.path} has fewer than two of the requested positions with >= {cfg.min_tokens_per_position} "
                           "tokens: extract more tokens, or with a longer fixed input length")
    n = int(min(cfg.max_tokens_per_position, min(counts[p] for p in kept)))
    rng = np.random.default_rng(cfg.seed)
    return {p: np.sort(rng.choice(np.flatnonzero(pos_col == p), size=n, replace=False)) for p in kept}, n


def _rows(store, layer: int, index: np.ndarray) -> torch.Tensor:
    from ..data.store import StoreView

    mask = np.zeros(store.n_tokens, dtype=bool)
    mask[index] = True
    return StoreView(store, layer, mask).rows()


def run_positions(cfg: PositionsConfig) -> dict[str, Any]:
    from ..data.sources import split_rows
    from ..data.store import ActivationStore
    from .plots import plot_positions

    store = ActivationStore(cfg.store)
    layers = cfg.layers or store.layers
    missing = [layer for layer in layers if layer not in store.layers]
    if missing:
        raise BitlensError(f"layer {missing[0]} is not in store {cfg.store} (layers: {store.layers})")
    by_position, n_rows = _sample_positions(store, cfg)
    positions = sorted(by_position)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, command="entropy positions",
                   config={**cfg.to_dict(), "loss": llm_loss(cfg.target_fvu).to_dict()},
                   seeds={"seed": cfg.seed}, inputs={"store": str(cfg.store),
                                                     "store_settings": store.manifest.get("settings")})
    per_layer = []
    total = len(layers) * (len(positions) if cfg.mode == "per_position" else 1)
    bar = tqdm(total=total, desc=f"entropy positions ({cfg.mode})", unit="BAE", disable=not cfg.progress)
    for layer in layers:
        curve = []
        # attention-sink rows (norm > 10x the median) sit at early positions; left in, one of them sets a per-position
        # BAE's input scale and its code collapses, so they are left out as in every store split
        typical = ~store.outliers(layer)
        index = {p: by_position[p][typical[by_position[p]]] for p in positions}
        if cfg.mode == "per_position":
            how = UnitTraining(steps=cfg.steps, batch_size=cfg.batch_size, expansion=cfg.expansion, seed=cfg.seed,
                               keep_optimizer=False, device=cfg.device, target_fvu=cfg.target_fvu)
            for p in positions:
                rows = _rows(store, layer, index[p])
                train, val = split_rows(rows, 0.1, cfg.seed)
                result = fit_unit(out / f"layer_{layer:02d}" / f"pos_{p:04d}", train, val, how, {"": rows},
                                  inputs={"store": str(cfg.store), "layer": layer, "position": p})
                curve.append({"position": p, **result})
                bar.update(1)
        else:
            how = UnitTraining(steps=cfg.shared_steps, batch_size=cfg.batch_size, expansion=cfg.expansion,
                               seed=cfg.seed, device=cfg.device, target_fvu=cfg.target_fvu)
            train, val = store.split(0.1, cfg.seed, layer)
            sets = {f"pos_{p}": _rows(store, layer, index[p]) for p in positions}
            result = fit_unit(out / f"layer_{layer:02d}" / "shared", train, val, how, sets,
                              inputs={"store": str(cfg.store), "layer": layer})
            curve = [{"position": p, **result[f"pos_{p}"], "fvu_shared": result["fvu"]} for p in positions]
            bar.update(1)
        sat = detect_saturation([c["position"] for c in curve], [c["entropy_bits"] for c in curve],
                                rel_tol=cfg.rel_tol, abs_tol=cfg.abs_tol)
        per_layer.append({"layer": layer, "positions": curve, **sat.to_dict(),
                          "outliers_left_out": int(sum(len(by_position[p]) - len(index[p]) for p in positions))})
    bar.close()
    summary = {"store": str(cfg.store), "mode": cfg.mode, "rows_per_position": n_rows, "d": store.dim,
               "d_prime": cfg.expansion * store.dim, "layers": per_layer}
    write_json(out / "positions.json", summary)
    plot_positions(per_layer, out / "positions.png")
    return summary
