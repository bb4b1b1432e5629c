"""Figures: training curves and the synthetic benchmark. Matplotlib with the Agg backend, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


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
    fig, axes = plt.subplots(2, 4 if len(panels) > 6 else 3, figsize=(17 if len(panels) > 6 else 13, 6.5))
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
        if len(keys) > 1:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_synth(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Estimated vs true bits (with the y = x line and +-1 bit band) and FVU per r."""
    r = [row["true_bits"] for row in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    lo, hi = 0, max(r) + 1
    a.fill_between([lo, hi], [lo - 1, hi - 1], [lo + 1, hi + 1], color="0.9", label="±1 bit")
    a.plot([lo, hi], [lo, hi], "k--", lw=1, label="truth")
    a.plot(r, [row["estimated_bits"] for row in results], "o-", label="BAE estimate")
    if "joint_bits" in results[0]:
        a.plot(r, [row["joint_bits"] for row in results], "x:", label="plug-in joint")
    a.set_xlabel("true entropy r (bits)")
    a.set_ylabel("estimated entropy (bits)")
    a.set_title("Synthetic known-entropy benchmark")
    a.legend()
    a.grid(alpha=0.3)
    b.bar([str(x) for x in r], [row["fvu"] for row in results])
    b.axhline(0.10, color="r", ls="--", lw=1, label="target 0.10")
    b.set_xlabel("true entropy r (bits)")
    b.set_ylabel("FVU (validation)")
    b.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_frequency_histograms(frequencies: dict[str, Any], path: str | Path) -> None:
    """Side-by-side log10 firing-density histograms, one panel per coder, shared bins. Dead features (f = 0)
    cannot sit on a log axis: they are counted in the panel title with the constant-on (f = 1) ones; dashed lines
    mark the dense thresholds 0.1 and 0.5."""
    import numpy as np

    names = list(frequencies)
    if not names:
        return
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.2 * rows), squeeze=False, sharex=True)
    alive = [np.asarray(frequencies[n])[np.asarray(frequencies[n]) > 0] for n in names]
    low = min([float(np.log10(a.min())) for a in alive if len(a)] + [-5.0])
    bins = np.linspace(np.floor(low), 0, 41)
    for ax, name, a in zip(axes.flat, names, alive):
        f = np.asarray(frequencies[name])
        ax.hist(np.log10(a), bins=bins, color="C0")
        ax.axvline(-1, color="r", ls="--", lw=1)
        ax.axvline(np.log10(0.5), color="r", ls=":", lw=1)
        ax.set_title(f"{name}: {int((f == 0).sum())} dead, {int((f == 1).sum())} always on / {len(f)}", fontsize=9)
        ax.set_xlabel("log10 firing frequency")
        ax.set_ylabel("features")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def plot_unit_counts(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Per coder: dead / dense / constant-on fractions, FVU and CE recovered, as grouped bars."""
    import numpy as np

    names = [r["name"] for r in rows]
    x = np.arange(len(names))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    for i, (key, label) in enumerate([("dead_frac", "dead"), ("dense_frac", "dense f > 0.1"),
                                      ("dense_half_frac", "dense f > 0.5"), ("constant_on_frac", "constant-on")]):
        a.bar(x + (i - 1.5) * 0.2, [r[key] for r in rows], 0.2, label=label)
    a.set_xticks(x, names, rotation=20)
    a.set_ylabel("fraction of features")
    a.legend(fontsize=8)
    a.grid(alpha=0.3, axis="y")
    for i, (key, label) in enumerate([("fvu", "FVU"), ("ce_recovered", "CE recovered (zero abl.)"),
                                      ("cosine", "cosine")]):
        b.bar(x + (i - 1) * 0.27, [r[key] for r in rows], 0.27, label=label)
    b.set_xticks(x, names, rotation=20)
    b.legend(fontsize=8)
    b.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, path)
