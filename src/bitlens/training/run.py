"""One training run in a folder: checkpoint, metrics, curves, final statistics and manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch

from ..coders.bae import BAEConfig, BinaryAutoencoder
from ..data.sources import RowSource
from ..io import BitlensError, write_json, write_manifest
from ..report.plots import plot_training_curves
from .config import LossConfig, TrainConfig
from .trainer import CHECKPOINT, Trainer, read_metrics


def apply_paper_preset(bae: BAEConfig, train: TrainConfig, loss: LossConfig,
                       keep: set[str] = frozenset()) -> tuple[BAEConfig, TrainConfig, LossConfig]:
    """The official recipe: raw inputs and per-element MSE, weights 1e-7, entropy on after a quarter of training
    (500 of the official 2000 epochs) with a hard switch, covariance from the start, ``official`` surrogate,
    PyTorch's initialisation, fixed weights (no target FVU), Adam 5e-4 at constant LR. Field names in ``keep`` (set
    explicitly by the user) are left alone."""
    def put(obj, **values):
        return dataclasses.replace(obj, **{k: v for k, v in values.items() if k not in keep})

    total = train.steps
    return (put(bae, surrogate="official", init="torch"),
            put(train, lr=5e-4, lr_decay=0.0),
            put(loss, preset="paper", entropy_weight=1e-7, cov_weight=1e-7, entropy_start=total // 4,
                entropy_ramp=0, cov_start=0, cov_ramp=0, target_fvu=0.0))


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
    return train_coder("bae", train, val, out_dir, bae or BAEConfig(), cfg, loss or LossConfig(), resume=resume,
                       inputs=inputs, resume_overrides=resume_overrides)


def train_coder(architecture: str, train: RowSource, val: RowSource | None, out_dir: str | Path,
                coder: Any = None, cfg: TrainConfig | None = None, loss: Any = None, resume: bool = False,
                inputs: dict[str, Any] | None = None, resume_overrides: dict[str, Any] | None = None,
                prepare: Callable[[torch.nn.Module], None] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train (or resume) a coder of any registered ``architecture`` with the shared trainer, checkpoint format,
    metrics and save format. ``coder`` and ``loss`` default to the architecture's config classes' defaults.
    ``train``/``val`` may be paired sources (``PairedRows``: transcoder inputs and targets). ``prepare`` is called
    on a fresh model before training (e.g. the random control's ``match_rates``).
    """
    from .objectives import default_coder_config, init_coder, objective_for

    out_dir = Path(out_dir)
    spec = objective_for(architecture)
    cfg = cfg or TrainConfig()
    coder = coder if coder is not None else default_coder_config(architecture)
    loss = loss if loss is not None else spec.loss_config()
    if resume:
        trainer = Trainer.resume(out_dir, train, val, resume_overrides)
    else:
        if (out_dir / CHECKPOINT).exists():
            raise BitlensError(f"{out_dir} already holds a checkpoint: pass --resume to continue it, or pick a new --out")
        if train.dim <= 0:
            raise BitlensError("training data has no columns")
        targets = train.target_rows(65536) if hasattr(train, "target_rows") else None
        dims = {"d_in": train.dim}
        if targets is not None:
            dims["d_out"] = int(targets.shape[1])
        coder = dataclasses.replace(coder, **dims)
        model = init_coder(architecture, coder, train.rows(65536), loss, cfg.seed, targets)
        if prepare is not None:
            prepare(model)
        trainer = Trainer(model, train, val, cfg, loss, out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        scales = {"input_scale": float(trainer.model.input_scale)}
        if hasattr(trainer.model, "output_scale"):
            scales["output_scale"] = float(trainer.model.output_scale)
        write_manifest(out_dir, command="train", config={
            "architecture": architecture, ("bae" if architecture == "bae" else "coder"): trainer.model.cfg.to_dict(),
            "train": cfg.to_dict(), "loss": loss.to_dict(), **scales, "data_variance": trainer.variance,
        }, seeds={"seed": cfg.seed}, inputs={**(inputs or {}), "train_rows": train.n_rows,
                                              "val_rows": val.n_rows if val is not None else 0})
    try:
        last = trainer.fit()
    finally:
        plot_training_curves(read_metrics(out_dir), out_dir / "curves.png")
    # fit() evaluates at its last step; a resumed run that was already finished has not evaluated yet
    val = {k[len("val/"):]: v for k, v in last.items() if k.startswith("val/")} or trainer.evaluate()
    final = {"step": trainer.step, **val}
    if trainer.controller is not None:  # the operating point this run was trained to, next to the one it reached
        final.update(target_fvu=trainer.controller.target, fvu_running=trainer.controller.fvu_running,
                     entropy_weight_final=trainer.loss_cfg.entropy_weight * trainer.controller.scale)
    write_json(out_dir / "final_metrics.json", final)
    return trainer.model.eval(), final


def encode_all(model: torch.nn.Module, rows: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Codes of rows [n, d] (no gradients): uint8 [n, d'] for binary coders (BAE bits), float32 activations
    [n, width] for the others."""
    device = next(model.parameters()).device
    dtype = torch.uint8 if getattr(model, "binary", False) else torch.float32
    with torch.no_grad():
        return torch.cat([model.encode(rows[i:i + chunk].to(device)).to(dtype).cpu()
                          for i in range(0, rows.shape[0], chunk)])
