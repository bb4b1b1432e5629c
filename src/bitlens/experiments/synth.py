"""The synthetic known-entropy benchmark: one BAE per r on data of exactly r bits; compare the estimate with r."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..coders.bae import BAEConfig
from ..config import Serializable
from ..data.sources import split_rows
from ..data.synthetic import known_entropy_data
from ..io import write_json, write_manifest
from .plots import plot_synth
from ..training.config import LossConfig, TrainConfig
from ..training.run import encode_all, train_bae
from ..analysis.entropy import estimate_entropy


@dataclass
class SynthConfig(Serializable):
    """The synthetic data."""

    bits: list[int] = field(default_factory=lambda: [2, 4, 6, 8, 10, 12])
    """True entropies r to test (one BAE each)."""
    dim: int = 64
    """Dimension d of the synthetic states."""
    rows: int = 16384
    """Rows per data set (keep >= 4 * 2^r so every code word is seen)."""
    noise: float = 0.0
    """Std of Gaussian noise added to each coordinate (0 = exact known entropy)."""

    def __post_init__(self) -> None:
        if not self.bits or min(self.bits) < 1:
            raise ValueError("bits needs at least one value, all >= 1")
        if self.rows < 4 or self.dim < 1:
            raise ValueError("rows must be >= 4 and dim >= 1")

    def bit_list(self) -> list[int]:
        return list(self.bits)


def run_synth(synth: SynthConfig, out: str | Path, bae: BAEConfig | None = None, train: TrainConfig | None = None,
              loss: LossConfig | None = None, echo=logging.getLogger(__name__).info) -> dict[str, Any]:
    """Train a BAE per r; write ``synth.json``, ``synth.png`` and one run folder per r under ``out``."""
    out = Path(out)
    bae, train, loss = bae or BAEConfig(), train or TrainConfig(), loss or LossConfig()
    seed = train.seed  # one seed drives the data (offset by r), the split and the training
    write_manifest(out, command="synth", config={"synth": synth.to_dict(), "bae": bae.to_dict(),
                                                 "train": train.to_dict(), "loss": loss.to_dict()},
                   seeds={"seed": seed})
    results = []
    echo(f"{'true bits':>9} {'estimated':>9} {'corrected':>9} {'joint':>7} {'FVU':>7} {'L0':>7} {'active':>6}")
    for r in synth.bit_list():
        x, _ = known_entropy_data(synth.rows, synth.dim, r, seed=seed + r, noise=synth.noise)
        tr, va = split_rows(x, train.val_fraction, seed)
        model, stats = train_bae(tr, va, out / f"r{r}", bae, train, loss, inputs={"synthetic_bits": r})
        est = estimate_entropy(encode_all(model, va.rows()))
        row = {"true_bits": r, "estimated_bits": est.marginal_bits,
               "estimated_bits_corrected": est.marginal_bits_corrected, "joint_bits": est.joint_bits,
               "joint_reliable": est.joint_reliable, "total_correlation_bits": est.total_correlation_bits,
               "fvu": stats["fvu"], "cosine": stats["cosine"], "l0": stats["l0"], "active_units": est.active_units,
               "dead": stats["dead"], "constant_on": stats["constant_on"]}
        results.append(row)
        echo(f"{r:>9} {row['estimated_bits']:>9.2f} {row['estimated_bits_corrected']:>9.2f} {row['joint_bits']:>7.2f} "
             f"{row['fvu']:>7.4f} {row['l0']:>7.1f} {row['active_units']:>6}")
    summary = {"results": results, "max_abs_error_bits": max(abs(r["estimated_bits"] - r["true_bits"]) for r in results),
               "max_fvu": max(r["fvu"] for r in results),
               "settings": {"synth": synth.to_dict(), "bae": bae.to_dict(), "train": train.to_dict(),
                            "loss": loss.to_dict()}}
    write_json(out / "synth.json", summary)
    plot_synth(results, out / "synth.png")
    return summary
