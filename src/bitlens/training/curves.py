"""The training-curves figure of a run folder (curves.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..plotting import save_figure, subplots


def plot_training_curves(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """One panel per metric against the step: FVU (validation, and the running training FVU of target-FVU
    training), entropy (bits), L0, covariance, unit counts, loss, and the entropy weight set by dual ascent."""
    if not records:
        return
    steps = [r["step"] for r in records]
    panels = [("FVU", ["val/fvu", "train/fvu_running"], "log"),
              ("entropy, bits", ["val/entropy_bits", "train/entropy_bits"], "linear"),
              ("L0 (active bits / token)", ["val/l0"], "linear"), ("covariance penalty", ["val/covariance"], "log"),
              ("units", ["val/dead", "val/constant_on", "val/dense"], "linear"), ("train loss", ["train/loss"], "log")]
    if any("train/entropy_weight" in r for r in records):
        panels.append(("entropy weight (dual ascent)", ["train/entropy_weight"], "log"))
    fig, axes = subplots(2, 4 if len(panels) > 6 else 3, figsize=(17 if len(panels) > 6 else 13, 6.5))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, keys, scale) in zip(axes.flat, panels):
        for key in keys:
            ys = [r.get(key) for r in records]
            if any(y is not None for y in ys):
                ax.plot(steps, [float("nan") if y is None else y for y in ys], marker=".", label=key.split("/", 1)[-1]
                        if len(keys) > 1 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if scale == "log" and all((r.get(keys[0]) or 0) > 0 for r in records):
            ax.set_yscale("log")
        if len(keys) > 1 and ax.get_legend_handles_labels()[0]:  # a panel whose metrics were never logged stays bare
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
