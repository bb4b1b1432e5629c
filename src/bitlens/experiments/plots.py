"""Figures of the experiments: synthetic benchmark, coder comparison, entropy across layers, positions and ICL."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..plotting import save_figure, subplots


def plot_layers(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Entropy (marginal sum and corrected) per layer, with FVU and L0 in a second panel."""
    layers = [r["layer"] for r in rows]
    fig, (ax, ax2) = subplots(1, 2, figsize=(12, 4))
    ax.plot(layers, [r["entropy_bits"] for r in rows], "o-", label="sum of marginal entropies")
    ax.plot(layers, [r["entropy_bits_corrected"] for r in rows], "--", label="Miller-Madow corrected")
    ax.plot(layers, [r["joint_bits_corrected"] for r in rows], ":", label="plug-in joint (capped at log2 n)")
    ax.set_xlabel("layer (hidden_states[L])")
    ax.set_ylabel("entropy, bits")
    ax.set_title("layer bandwidth")
    ax.legend(fontsize=8)
    ax2.plot(layers, [r["fvu"] for r in rows], "o-", color="C3", label="FVU")
    ax2.set_xlabel("layer")
    ax2.set_ylabel("FVU", color="C3")
    twin = ax2.twinx()
    twin.plot(layers, [r["l0"] for r in rows], "s-", color="C2", label="L0")
    twin.set_ylabel("L0 (active bits / token)", color="C2")
    ax2.set_title("reconstruction and code density")
    save_figure(fig, path)


def plot_positions(per_layer: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Entropy against token position, one line per layer, the saturation position marked."""
    fig, ax = subplots(figsize=(8, 4.5))
    for i, entry in enumerate(per_layer):
        pos = [p["position"] for p in entry["positions"]]
        ax.plot(pos, [p["entropy_bits"] for p in entry["positions"]], "o-", ms=3, color=f"C{i % 10}",
                label=f"layer {entry['layer']}")
        sat = entry.get("saturation_position")
        if sat is not None:
            ax.axvline(sat, color=f"C{i % 10}", ls=":", lw=1)
        ax.axhline(entry["plateau_bits"], color=f"C{i % 10}", ls="--", lw=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token position t (log scale); dotted: saturation, dashed: plateau")
    ax.set_ylabel("entropy, bits")
    ax.set_title("entropy of hidden states by position")
    ax.legend(fontsize=8, ncol=2)
    save_figure(fig, path)


def plot_icl(tasks: dict[str, Any], path: str | Path) -> None:
    """Per task: entropy of the last token against k (one line per layer) and ICL accuracy against k."""
    names = list(tasks)
    fig, axes = subplots(2, len(names), figsize=(5.5 * len(names), 7), squeeze=False)
    for col, name in enumerate(names):
        task = tasks[name]
        ax = axes[0][col]
        for i, entry in enumerate(task["layers"]):
            ks = [p["k"] for p in entry["curve"]]
            ax.plot(ks, [p["entropy_bits"] for p in entry["curve"]], "o-", ms=3, color=f"C{i % 10}",
                    label=f"layer {entry['layer']}")
        ax.set_title(f"{name}: entropy of the last token")
        ax.set_xlabel("demonstrations k")
        ax.set_ylabel("entropy, bits")
        ax.legend(fontsize=7)
        acc = axes[1][col]
        acc.plot([p["k"] for p in task["accuracy"]], [p["accuracy"] for p in task["accuracy"]], "o-", color="k")
        acc.axhline(1.0 / len(task["labels"]), color="gray", ls=":", label="chance")
        acc.set_ylim(0, 1)
        acc.set_xlabel("demonstrations k")
        acc.set_ylabel("ICL accuracy")
        acc.legend(fontsize=7)
    save_figure(fig, path)


def plot_synth(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Estimated vs true bits (with the y = x line and +-1 bit band) and FVU per r."""
    r = [row["true_bits"] for row in results]
    fig, (a, b) = subplots(1, 2, figsize=(10, 4))
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
    save_figure(fig, path)


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
    fig, axes = subplots(rows, cols, figsize=(4.3 * cols, 3.2 * rows), squeeze=False, sharex=True)
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
    save_figure(fig, path)


def plot_unit_counts(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Per coder: dead / dense / constant-on fractions, FVU and CE recovered, as grouped bars."""
    import numpy as np

    names = [r["name"] for r in rows]
    x = np.arange(len(names))
    fig, (a, b) = subplots(1, 2, figsize=(12, 4))
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
    save_figure(fig, path)


def plot_steer(tasks: dict[str, Any], path: str | Path) -> None:
    """Per task: accuracy against steering strength, one line per method (95% intervals as bars), with the
    unsteered 0-shot and the k-shot accuracies as horizontal references."""
    names = list(tasks)
    fig, axes = subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        task = tasks[name]
        for i, (method, entry) in enumerate(task["methods"].items()):
            xs = [c["strength"] for c in entry["curve"]]
            ys = [c["accuracy"] for c in entry["curve"]]
            err = [[max(0.0, y - c["ci95"][0]) for y, c in zip(ys, entry["curve"])],  # rounding at 0 and 1
                   [max(0.0, c["ci95"][1] - y) for y, c in zip(ys, entry["curve"])]]
            ax.errorbar([x + 0.03 * i for x in xs], ys, yerr=err, fmt="o-", ms=3, capsize=2, color=f"C{i % 10}",
                        label=method)
        ax.axhline(task["zero_shot"]["accuracy"], color="gray", ls=":", label="0-shot")
        ax.axhline(task["k_shot"]["accuracy"], color="k", ls="--", label="k-shot")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{name}: steered 0-shot accuracy")
        ax.set_xlabel("strength (x tv)")
        ax.set_ylabel("accuracy over the label set")
        ax.legend(fontsize=7)
    save_figure(fig, path)
