"""Figures of the information analyses: entropy across layers, positions and ICL demonstrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .plots import _save, plt


def plot_layers(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Entropy (marginal sum and corrected) per layer, with FVU and L0 in a second panel."""
    layers = [r["layer"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4))
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
    _save(fig, path)


def plot_positions(per_layer: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Entropy against token position, one line per layer, the saturation position marked."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
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
    _save(fig, path)


def plot_icl(tasks: dict[str, Any], path: str | Path) -> None:
    """Per task: entropy of the last token against k (one line per layer) and ICL accuracy against k."""
    names = list(tasks)
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 7), squeeze=False)
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
    _save(fig, path)
