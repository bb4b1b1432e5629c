"""One small BAE per unit of an analysis (a layer, a (layer, position), a (task, layer)), resumable unit by unit.

Each unit lives in its own folder: a normal training run (``bitlens.training.run.train_bae``: checkpoint, metrics,
manifest) plus ``result.json`` written last, atomically. A unit with ``result.json`` is finished and never redone;
a unit with a checkpoint but no result resumes its training where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..coders.bae import BAEConfig
from ..data.sources import RowSource
from ..io import write_json
from ..training.config import DEFAULT_TARGET_FVU, TrainConfig, llm_loss
from ..training.run import encode_all, refuse_other_settings, resume_or_refuse, train_bae
from ..analysis.entropy import BOOTSTRAP_RESAMPLES, bootstrap_bits, estimate_entropy

RESULT = "result.json"


@dataclass
class UnitTraining:
    """How each unit's BAE is trained (``llm_loss(target_fvu)``: minimum entropy subject to FVU <= target)."""

    steps: int
    batch_size: int = 512
    expansion: int = 4
    seed: int = 0
    target_fvu: float = DEFAULT_TARGET_FVU
    keep_optimizer: bool = True  # False: drop Adam's state once the unit is finished (saves 2/3 of the disk)
    device: str = "cpu"


def entropy_fields(codes: torch.Tensor) -> dict[str, Any]:
    """The entropy numbers every analysis reports for a set of codes [n, d'], with a 95% bootstrap interval over
    the rows."""
    est = estimate_entropy(codes)
    return {"entropy_bits": est.marginal_bits, "entropy_bits_ci95": list(bootstrap_bits(codes)),
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "entropy_bits_corrected": est.marginal_bits_corrected,
            "joint_bits_corrected": est.joint_bits_corrected, "joint_reliable": est.joint_reliable,
            "total_correlation_bits": est.total_correlation_bits, "n_entropy_rows": est.n_samples,
            "active_units": est.active_units}


def finished(folder: str | Path) -> dict[str, Any] | None:
    """The unit's result if it is finished, else None."""
    import json

    path = Path(folder) / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def fit_unit(folder: str | Path, train: RowSource, val: RowSource, how: UnitTraining,
             entropy_sets: dict[str, torch.Tensor], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume, or just read) the BAE of one unit; return its result.

    ``entropy_sets`` maps a name to rows whose codes' entropy is reported: ``{"": rows}`` puts the entropy fields at
    the top level, other names nest them (e.g. one set per ICL k). FVU, L0 and cosine come from ``val``.
    """
    folder = Path(folder)
    started = time.perf_counter()
    # ten evaluations: each is a candidate for the best feasible state a run returns when its last step misses the
    # target (training/feasible.py); on 16384 rows they cost little next to the training
    cfg = TrainConfig(steps=how.steps, batch_size=min(how.batch_size, train.n_rows), seed=how.seed,
                      eval_every=max(1, how.steps // 10), checkpoint_every=max(1, how.steps // 2),
                      eval_tokens=16384, progress=False, device=how.device)
    bae, loss = BAEConfig(expansion=how.expansion), llm_loss(how.target_fvu)
    settings = {"bae": bae.to_dict(), "train": cfg.settings(), "loss": loss.to_dict()}
    done = finished(folder)
    if done is not None:  # reused only if it was made with these settings (another width, target or length: refused)
        refuse_other_settings(folder, settings, "BAE")
        return done
    resume = resume_or_refuse(folder, settings, "BAE") != "new"
    model, stats = train_bae(train, val, folder, bae, cfg, loss,
                             resume=resume, inputs=inputs)
    result: dict[str, Any] = {"target_fvu": how.target_fvu, "fvu": stats.get("fvu"), "l0": stats.get("l0"),
                              "cosine": stats.get("cosine"), "mse": stats.get("mse"), "dead": stats.get("dead"),
                              "constant_on": stats.get("constant_on"), "steps": stats.get("step"),
                              "train_rows": train.n_rows, "val_rows": val.n_rows}
    for name, rows in entropy_sets.items():
        fields = entropy_fields(encode_all(model, rows))
        if name:
            result[name] = fields
        else:
            result.update(fields)
    result["seconds"] = time.perf_counter() - started  # of this session only, when a unit was resumed
    write_json(folder / RESULT, result)  # from here on the unit is finished
    if not how.keep_optimizer:  # the coder stays loadable (cfg.json + model.safetensors); the rest only resumed it
        for extra in (folder / "checkpoint").iterdir():
            if extra.name not in ("cfg.json", "model.safetensors"):
                extra.unlink()
    return result
