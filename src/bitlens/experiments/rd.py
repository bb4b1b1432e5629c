"""`bitlens entropy rd`: the entropy–distortion curve of one set of hidden states.

One BAE per (target FVU, seed), each trained to its target by dual ascent (``LossConfig.target_fvu``); every BAE
sees the same training tokens and is measured on the same held-out tokens (the document split is fixed, the seed
moves the initialisation and the batch order). Per target the report gives the achieved FVU and the bits (mean and
standard deviation over seeds, and a bootstrap interval over the held-out tokens), the dead and constant-on units,
and the ratio of the bits to the rate-distortion function of a Gaussian with the same covariance at the achieved
FVU (reverse water-filling on the eigenvalues of the held-out covariance; by Shannon the highest R(D) of any source
with that covariance). The knee of the curve (``knee_bits``) is where more bits stop buying FVU: for a planted code
the truth sits there. A target that the starting width cannot reach because its code is full (``FULL_CODE``) is
trained again at twice the width (``--widen``), and its point records the width it was measured at.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from .unit_bae import UnitTraining, fit_unit
from ..analysis.entropy import bootstrap_bits
from ..config import Serializable
from ..io import BitlensError, atomic_path, write_json, write_manifest
from ..training.config import TARGET_TOLERANCE, llm_loss

FULL_CODE = 0.95
"""A point whose bits reach this fraction of d' has a full code: nearly every unit is a fair coin, so a target it
misses is out of reach of this width (a wider code, ``--expansion``, or longer training may reach it), not a
property of the states."""


@dataclass
class RDConfig(Serializable):
    """Settings of `bitlens entropy rd`."""

    store: str = ""
    """Activation store (from `bitlens extract`); or give --activations."""
    activations: str = ""
    """Instead of a store: a 2-D float array [rows, dim] (.npy or .safetensors), split by row."""
    layer: int | None = None
    """Layer of the store (hidden_states[L]); none = the store's only layer."""
    out: str = "runs/rd"
    """Output folder: rd.json, rd.png and one BAE run per (target, seed) (finished runs are not redone)."""
    targets: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.4])
    """Target FVUs, one BAE per target and seed."""
    seeds: int = 3
    """Seeds per target (initialisation and batch order; the split is the same for all)."""
    steps: int = 3000
    """Training steps of each BAE (batch 512)."""
    batch_size: int = 512
    """Rows per training step."""
    expansion: int = 4
    """Code size d' = expansion * d (the width every target starts at)."""
    widen: bool = True
    """A target missed with a full code (bits >= 95% of d': nearly every unit a fair coin, so the width, not the
    states, stops the FVU) is trained again at twice the width, up to --max-expansion, after its first full seed;
    each point records the width it was measured at (on the demo store the 0.05 target needs d' = 8d)."""
    max_expansion: int = 16
    """With --widen: the widest code a missed target is retried at (d' = max_expansion * d)."""
    val_fraction: float = 0.1
    """Fraction of the documents (rows, for --activations) held out: bits, FVU and the Gaussian R(D) use them."""
    eval_tokens: int = 20000
    """At most this many held-out tokens for the bits."""
    bootstrap: int = 200
    """Bootstrap resamples of the held-out tokens for each run's interval on the bits (0 = keep the 200-resample
    interval every run carries)."""

    def __post_init__(self) -> None:
        if not self.targets or min(self.targets) <= 0 or max(self.targets) >= 1:
            raise ValueError("targets must be FVUs in (0, 1)")
        if self.seeds < 1 or self.steps < 1 or self.eval_tokens < 2 or self.bootstrap < 0:
            raise ValueError("seeds and steps must be >= 1, eval_tokens >= 2, bootstrap >= 0")
        if self.expansion < 1 or self.max_expansion < self.expansion:
            raise ValueError("expansion must be >= 1 and max_expansion >= expansion")


# ---- the Gaussian reference -----------------------------------------------------------------------------------
def gaussian_rate(eigenvalues: Sequence[float] | np.ndarray, fvu: float) -> float:
    """Bits per vector of a Gaussian with these covariance eigenvalues at distortion FVU (reverse water-filling).

    R(D) = sum_i max(0, 1/2 log2(l_i / theta)) with theta solving sum_i min(theta, l_i) = D = fvu * sum_i l_i.
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None)
    total = lam.sum()
    if fvu >= 1 or total <= 0:
        return 0.0
    if fvu <= 0:
        return math.inf
    target = fvu * total
    lo, hi = 0.0, float(lam.max())
    for _ in range(200):  # bisection: sum(min(theta, l)) is increasing in theta
        mid = (lo + hi) / 2
        if np.minimum(mid, lam).sum() < target:
            lo = mid
        else:
            hi = mid
    theta = (lo + hi) / 2
    pos = lam > theta
    return float(0.5 * np.log2(lam[pos] / theta).sum())


def covariance_eigenvalues(rows: torch.Tensor) -> np.ndarray:
    """Eigenvalues of the covariance of rows [n, d] (float64)."""
    x = rows.double()
    x = x - x.mean(0)
    return torch.linalg.eigvalsh(x.T @ x / max(x.shape[0] - 1, 1)).clamp_min(0).numpy()


# ---- the knee -------------------------------------------------------------------------------------------------
class Knee(NamedTuple):
    index: int
    fvu: float
    bits: float


def find_knee(fvu: Sequence[float], bits: Sequence[float]) -> Knee | None:
    """The knee of a bits-vs-FVU curve: the point farthest below the chord between its ends, both axes scaled to
    [0, 1] (Kneedle). Past it, towards lower FVU, bits grow faster than the FVU falls. None with < 3 points or when
    no point lies below the chord (a straight or concave curve has no knee)."""
    if len(fvu) < 3:
        return None
    order = np.argsort(fvu)
    f, b = np.asarray(fvu, float)[order], np.asarray(bits, float)[order]
    fs = (f - f[0]) / max(f[-1] - f[0], 1e-12)
    bs = (b - b.min()) / max(b.max() - b.min(), 1e-12)
    chord = bs[0] + (bs[-1] - bs[0]) * fs
    below = chord - bs  # the curve is convex decreasing: the knee is the deepest point under the chord
    i = int(np.argmax(below))
    if below[i] <= 1e-9:
        return None
    return Knee(int(order[i]), float(f[i]), float(b[i]))


# ---- the runner -----------------------------------------------------------------------------------------------
def _data(cfg: RDConfig):
    if bool(cfg.store) == bool(cfg.activations):
        raise BitlensError("the rate-distortion curve needs exactly one of a store and an activation file")
    if cfg.store:
        from ..data.store import ActivationStore

        store = ActivationStore(cfg.store)
        layer = store.default_layer(cfg.layer)
        train, val = store.split(cfg.val_fraction, 0, layer)
        inputs = {"store": str(cfg.store), "layer": layer, "store_settings": store.manifest.get("settings")}
        return train, val, val.rows(cfg.eval_tokens, seed=0), inputs
    from ..data.sources import load_activations, split_rows
    from ..io import file_fingerprint

    x = load_activations(cfg.activations)
    train, val = split_rows(x, cfg.val_fraction, 0)
    inputs = {"activations": str(cfg.activations), "sha256": file_fingerprint(cfg.activations)}
    return train, val, val.rows(cfg.eval_tokens), inputs


def _missed_full(result: dict[str, Any], target: float, d_prime: int) -> bool:
    """A run that missed its target with a full code (the width, not the states, stopped its FVU)."""
    missed = abs(result["fvu"] - target) > TARGET_TOLERANCE and result["fvu"] > target
    return missed and result["entropy_bits"] >= FULL_CODE * d_prime


def _fit_target(cfg: RDConfig, target: float, fit_seed, d: int, echo) -> tuple[list[dict[str, Any]], int,
                                                                                list[dict[str, Any]]]:
    """The seeds' runs of one target, the expansion they ran at, and the narrower attempts given up (--widen: a
    seed that ends full and short of the target sends the target to twice the width)."""
    expansion, narrower = cfg.expansion, []
    while True:
        runs = []
        for seed in range(cfg.seeds):
            runs.append(fit_seed(target, seed, expansion))
            if cfg.widen and 2 * expansion <= cfg.max_expansion and _missed_full(runs[-1], target, expansion * d):
                break
        else:
            return runs, expansion, narrower
        last = runs[-1]
        narrower.append({"expansion": expansion, "d_prime": expansion * d, "seeds_run": len(runs),
                         "fvu": last["fvu"], "entropy_bits": last["entropy_bits"]})
        echo(f"target {target:.3f}: the code is full at d' = {expansion}d ({last['entropy_bits']:.0f} of "
             f"{expansion * d} bits, FVU {last['fvu']:.4f}); training it again at d' = {2 * expansion}d")
        expansion *= 2


def run_rd(cfg: RDConfig, echo=logging.getLogger(__name__).info) -> dict[str, Any]:
    from ..training.run import encode_all

    train, val, eval_rows, inputs = _data(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, command="entropy rd", config={**cfg.to_dict(), "loss": llm_loss().to_dict()},
                   seeds={"seeds": list(range(cfg.seeds)), "split_seed": 0}, inputs=inputs)
    eigenvalues = covariance_eigenvalues(eval_rows)
    d = int(eval_rows.shape[1])

    def fit_seed(target: float, seed: int, expansion: int) -> dict[str, Any]:
        # the starting width keeps the folder layout of earlier versions, so their finished runs are read back
        folder = out / f"fvu_{target:.3f}" / ("" if expansion == cfg.expansion else f"x{expansion}") / f"seed_{seed}"
        how = UnitTraining(steps=cfg.steps, batch_size=cfg.batch_size, expansion=expansion, seed=seed,
                           target_fvu=target)
        result = fit_unit(folder, train, val, how, {"": eval_rows}, inputs=inputs)
        if cfg.bootstrap and result.get("bootstrap_resamples") != cfg.bootstrap:  # another count, or an old run
            from ..coders.registry import load

            codes = encode_all(load(folder / "checkpoint"), eval_rows)
            result["entropy_bits_ci95"] = list(bootstrap_bits(codes, cfg.bootstrap, seed))
            result["bootstrap_resamples"] = cfg.bootstrap
            write_json(folder / "result.json", result)
        echo(f"target {target:.3f} seed {seed} (d' = {expansion}d): FVU {result['fvu']:.4f}, "
             f"{result['entropy_bits']:.1f} bits, dead {result['dead']}, constant-on {result['constant_on']}")
        return result

    points = []
    for target in sorted(cfg.targets):
        runs, expansion, narrower = _fit_target(cfg, target, fit_seed, d, echo)
        fvus = np.array([r["fvu"] for r in runs])
        bits = np.array([r["entropy_bits"] for r in runs])
        g = gaussian_rate(eigenvalues, float(fvus.mean()))
        reached = bool(np.abs(fvus - target).max() <= TARGET_TOLERANCE or fvus.max() < target)
        full = bool(bits.mean() >= FULL_CODE * expansion * d)
        if not reached:
            echo(f"target {target:.3f} not reached: held-out FVU {fvus.mean():.4f} (tolerance ±{TARGET_TOLERANCE})"
                 + (f" with {bits.mean():.0f} bits of a possible {expansion * d}: the code is full, a lower FVU "
                    "needs a wider code (--expansion, --max-expansion) or longer training (--steps)" if full else ""))
        points.append({
            "target_fvu": target, "fvu": float(fvus.mean()),
            "fvu_std": float(fvus.std(ddof=1)) if len(runs) > 1 else 0.0,
            "entropy_bits": float(bits.mean()),
            "entropy_bits_std": float(bits.std(ddof=1)) if len(runs) > 1 else 0.0,
            "dead": float(np.mean([r["dead"] for r in runs])),
            "constant_on": float(np.mean([r["constant_on"] for r in runs])),
            "l0": float(np.mean([r["l0"] for r in runs])),
            "gaussian_bits": g, "ratio_to_gaussian": float(bits.mean()) / g if g > 0 else None,
            "max_abs_fvu_error": float(np.abs(fvus - target).max()),
            "target_reached": reached, "code_full": full,
            "expansion": expansion, "d_prime": expansion * d, "narrower_attempts": narrower,
            "runs": [{"seed": s, "fvu": r["fvu"], "entropy_bits": r["entropy_bits"],
                      "entropy_bits_ci95": r.get("entropy_bits_ci95"), "dead": r["dead"],
                      "constant_on": r["constant_on"], "restored_step": r.get("restored_step")}
                     for s, r in enumerate(runs)]})
    knee = find_knee([p["fvu"] for p in points], [p["entropy_bits"] for p in points])
    grid = np.linspace(0.01, max(0.6, max(p["fvu"] for p in points) + 0.05), 60)
    summary = {
        **inputs, "d": d, "d_prime": cfg.expansion * d,
        "steps": cfg.steps, "seeds": cfg.seeds, "eval_tokens": int(eval_rows.shape[0]),
        "points": points,
        "knee_bits": knee.bits if knee else None, "knee_fvu": knee.fvu if knee else None,
        "gaussian_rd": {"fvu": grid.tolist(), "bits": [gaussian_rate(eigenvalues, float(f)) for f in grid],
                        "eigenvalues_from_tokens": int(eval_rows.shape[0])},
    }
    write_json(out / "rd.json", summary)
    plot_rd(summary, out / "rd.png")
    return summary


def plot_rd(summary: dict[str, Any], path: str | Path) -> None:
    """Bits against achieved FVU with seed error bars, the Gaussian R(D) reference and the knee."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    pts = summary["points"]
    ax.errorbar([p["fvu"] for p in pts], [p["entropy_bits"] for p in pts],
                xerr=[p["fvu_std"] for p in pts], yerr=[p["entropy_bits_std"] for p in pts],
                fmt="o-", capsize=3, label="BAE (one seed)" if summary["seeds"] == 1
                else f"BAE (mean ± sd over {summary['seeds']} seeds)")
    ax.plot(summary["gaussian_rd"]["fvu"], summary["gaussian_rd"]["bits"], "k--", lw=1,
            label="Gaussian R(D), same covariance")
    for p in pts:
        ax.axvline(p["target_fvu"], color="0.85", lw=0.8, zorder=0)
    missed = [p for p in pts if not p.get("target_reached", True)]
    if missed:  # a missed target is a point of the curve, but not a measurement at its stated FVU
        ax.plot([p["fvu"] for p in missed], [p["entropy_bits"] for p in missed], "o", ms=12, mfc="none",
                color="tab:red", label="target not reached" + (" (code full)" if any(p["code_full"] for p in missed)
                                                              else ""))
    for p in pts:  # a point measured on a wider code than the curve's starting width says so
        if p.get("expansion", 0) * summary["d"] != summary["d_prime"] and "expansion" in p:
            ax.annotate(f"d' = {p['expansion']}d", (p["fvu"], p["entropy_bits"]), textcoords="offset points",
                        xytext=(6, 6), fontsize=8)
    if summary["knee_bits"] is not None:
        ax.plot([summary["knee_fvu"]], [summary["knee_bits"]], "r*", ms=14,
                label=f"knee: {summary['knee_bits']:.1f} bits")
    ax.set_xlabel("FVU (held-out)")
    ax.set_ylabel("entropy (bits per vector)")
    ax.set_yscale("log")
    ax.set_title("Entropy–distortion curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
