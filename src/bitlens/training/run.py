"""One training run in a folder: checkpoint, metrics, curves, final statistics and manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..coders.bae import BAEConfig, BinaryAutoencoder
from ..data.sources import RowSource
from ..io import BitlensError, write_json, write_manifest
from ..report.plots import plot_training_curves
from .config import LossConfig, TrainConfig
from .trainer import CHECKPOINT, Trainer, init_bae, read_metrics


def apply_paper_preset(bae: BAEConfig, train: TrainConfig, loss: LossConfig,
                       keep: set[str] = frozenset()) -> tuple[BAEConfig, TrainConfig, LossConfig]:
    """The official recipe: raw inputs and per-element MSE, weights 1e-7, entropy on after a quarter of training
    (500 of the official 2000 epochs) with a hard switch, covariance from the start, ``official`` surrogate,
    Adam 5e-4 at constant LR. Field names in ``keep`` (set explicitly by the user) are left alone."""
    def put(obj, **values):
        return dataclasses.replace(obj, **{k: v for k, v in values.items() if k not in keep})

    total = train.steps
    return (put(bae, surrogate="official"),
            put(train, lr=5e-4, lr_decay=0.0),
            put(loss, preset="paper", entropy_weight=1e-7, cov_weight=1e-7, entropy_start=total // 4,
                entropy_ramp=0, cov_start=0, cov_ramp=0))


def train_bae(train: RowSource, val: RowSource | None, out_dir: str | Path, bae: BAEConfig | None = None,
              cfg: TrainConfig | None = None, loss: LossConfig | None = None, resume: bool = False,
              inputs: dict[str, Any] | None = None,
              resume_overrides: dict[str, Any] | None = None) -> tuple[BinaryAutoencoder, dict[str, Any]]:
    """Train (or resume) a BAE on ``train`` rows, evaluating on ``val``; everything goes to ``out_dir``.

    When resuming, the saved configs are used; ``resume_overrides`` may change the fields listed in
    ``Trainer.RESUMABLE_OVERRIDES`` (e.g. ``{"steps": 20000}`` to train longer).

    Returns the trained model (eval mode) and its final validation statistics.
    Raises KeyboardInterrupt after writing a checkpoint when interrupted.
    """
    out_dir = Path(out_dir)
    bae, cfg, loss = bae or BAEConfig(), cfg or TrainConfig(), loss or LossConfig()
    if resume:
        trainer = Trainer.resume(out_dir, train, val, resume_overrides)
    else:
        if (out_dir / CHECKPOINT).exists():
            raise BitlensError(f"{out_dir} already holds a checkpoint: pass --resume to continue it, or pick a new --out")
        if train.dim <= 0:
            raise BitlensError("training data has no columns")
        bae = dataclasses.replace(bae, d_in=train.dim)
        model = init_bae(bae, train.rows(65536), loss, cfg.seed)
        trainer = Trainer(model, train, val, cfg, loss, out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(out_dir, command="train", config={
            "bae": trainer.model.cfg.to_dict(), "train": cfg.to_dict(), "loss": loss.to_dict(),
            "input_scale": float(trainer.model.input_scale), "data_variance": trainer.variance,
        }, seeds={"seed": cfg.seed}, inputs={**(inputs or {}), "train_rows": train.n_rows,
                                              "val_rows": val.n_rows if val is not None else 0})
    try:
        last = trainer.fit()
    finally:
        plot_training_curves(read_metrics(out_dir), out_dir / "curves.png")
    # fit() evaluates at its last step; a resumed run that was already finished has not evaluated yet
    val = {k[len("val/"):]: v for k, v in last.items() if k.startswith("val/")} or trainer.evaluate()
    final = {"step": trainer.step, **val}
    write_json(out_dir / "final_metrics.json", final)
    return trainer.model.eval(), final


def encode_all(model: torch.nn.Module, rows: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Binary codes of rows [n, d] as uint8 [n, d'] (no gradients)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model.encode(rows[i:i + chunk].to(device)).to(torch.uint8).cpu()
                          for i in range(0, rows.shape[0], chunk)])
