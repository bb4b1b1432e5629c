"""`bitlens entropy layers`: the information bandwidth of each layer, from one BAE per layer on the same tokens.

All layers of a store share one split by document (the store's split is a function of the seed only), so every
layer's BAE trains on the same tokens and is evaluated on the same held-out tokens. Entropy is the BAE estimate on
the held-out tokens (sum of marginal bit entropies, the Miller-Madow corrected value, and the plug-in joint
entropy of whole code words as a check on independence); FVU and L0 come from the same tokens.

Layer 0 (``hidden_states[0]``, the token embeddings) is left out by default: it is a function of the token id
alone, so its "entropy" is that of the token distribution, not of any computation. Ask for it with ``--layers 0 ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import Serializable
from ..io import BitlensError, write_json, write_manifest
from ..training.config import DEFAULT_TARGET_FVU, llm_loss
from .unit_bae import UnitTraining, fit_unit


@dataclass
class LayersConfig(Serializable):
    """Settings of `bitlens entropy layers`."""

    store: str
    """Activation store holding the layers (from `bitlens extract --layers ...`)."""
    out: str = "runs/layers"
    """Output folder: layers.json, layers.png and one BAE run per layer (finished layers are not redone)."""
    layers: list[int] = field(default_factory=list)
    """Layers to analyse (default: every layer of the store except 0, the token embeddings)."""
    steps: int = 400
    """BAE training steps per layer (batch 512; under a minute per layer at d=576 on 2 cores)."""
    batch_size: int = 512
    """Rows per training step."""
    target_fvu: float = DEFAULT_TARGET_FVU
    """Target FVU of every BAE (minimum entropy subject to FVU <= F, by dual ascent), so all bits are read at one
    stated reconstruction; 0 = the fixed weights 1 / 100."""
    expansion: int = 4
    """Code size d' = expansion * d."""
    val_fraction: float = 0.2
    """Fraction of the store's documents held out: entropy, FVU and L0 are measured on their tokens."""
    eval_tokens: int = 20000
    """At most this many held-out tokens for the entropy estimate (the same tokens for every layer)."""
    seed: int = 0
    """Seed of the document split, the initialisation and the batch order."""
    device: str = "cpu"
    """Device for the BAEs: cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show a progress bar over layers."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.eval_tokens < 2:
            raise ValueError("steps must be >= 1, batch_size and eval_tokens >= 2")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be in (0, 1)")


def run_layers(cfg: LayersConfig) -> dict[str, Any]:
    from ..data.store import ActivationStore
    from .plots import plot_layers

    store = ActivationStore(cfg.store)
    layers = cfg.layers or [layer for layer in store.layers if layer != 0] or store.layers
    missing = [layer for layer in layers if layer not in store.layers]
    if missing:
        raise BitlensError(f"layer {missing[0]} is not in store {cfg.store} (layers: {store.layers})")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, command="entropy layers", config={**cfg.to_dict(), "loss": llm_loss(cfg.target_fvu).to_dict()},
                   seeds={"seed": cfg.seed}, inputs={"store": str(cfg.store),
                                                     "store_settings": store.manifest.get("settings")})
    how = UnitTraining(steps=cfg.steps, batch_size=cfg.batch_size, expansion=cfg.expansion, seed=cfg.seed,
                       device=cfg.device, target_fvu=cfg.target_fvu)
    rows_out = []
    for layer in tqdm(layers, desc="layers", unit="layer", disable=not cfg.progress):
        train, val = store.split(cfg.val_fraction, cfg.seed, layer)
        result = fit_unit(out / f"layer_{layer:02d}", train, val, how, {"": val.rows(cfg.eval_tokens, seed=cfg.seed)},
                          inputs={"store": str(cfg.store), "layer": layer})
        rows_out.append({"layer": layer, **result})
    summary = {"store": str(cfg.store), "n_layers_model": store.manifest["settings"].get("model", {}).get("n_layers"),
               "d": store.dim, "d_prime": cfg.expansion * store.dim, "steps": cfg.steps, "layers": rows_out}
    write_json(out / "layers.json", summary)
    plot_layers(rows_out, out / "layers.png")
    return summary
