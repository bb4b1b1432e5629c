"""`bitlens demo`: the whole pipeline on the embedded defaults, in a few minutes on a laptop CPU.

Extract ~200k tokens of one middle layer of SmolLM2-135M-Instruct over the State of the Union + Moby-Dick corpus,
train a BAE on them, and report reconstruction, entropy and the most frequent features with their tokens.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .analysis.entropy import estimate_entropy
from .analysis.features import firing_rates, frequent_features, show_token
from .config import Serializable
from .io import BitlensError, write_json
from .training.config import DEFAULT_TARGET_FVU, LossConfig, TrainConfig
from .training.run import encode_all, train_bae


@dataclass
class DemoConfig(Serializable):
    """Settings of `bitlens demo` (the defaults are the demo)."""

    out: str = "runs/demo"
    """Run folder: activations/, bae/ (the training run), summary.json."""
    model: str = "embedded"
    """Causal LM: 'embedded' (SmolLM2-135M-Instruct) or any model `bitlens extract` accepts."""
    corpus: str = "embedded"
    """Corpus: 'embedded' (State of the Union + Moby-Dick) or any corpus `bitlens extract` accepts."""
    tokens: int = 200_000
    """Tokens to extract."""
    layer: int = -1
    """Layer to extract (hidden_states[L]); -1 = the middle layer."""
    steps: int = 3000
    """BAE training steps (batch 512)."""
    seed: int = 0
    """Seed for the document order, the split and the training."""
    top: int = 20
    """How many of the most frequent non-constant features to report."""
    eval_tokens: int = 50_000
    """Validation tokens used for the report."""
    target_fvu: float = DEFAULT_TARGET_FVU
    """Target FVU of the BAE: its entropy is minimised subject to FVU <= F (dual ascent on the entropy weight);
    0 = the fixed weights below."""
    entropy_weight: float = 1.0
    """Entropy weight (scale_free, per unit): the starting weight with a target FVU, else the fixed one."""
    cov_weight: float = 100.0
    """Covariance weight (scale_free, per pair); scaled with the entropy weight under a target FVU."""


def run_demo(cfg: DemoConfig, echo=lambda line: print(line, flush=True)) -> dict[str, Any]:
    from .data.corpora import load_corpus
    from .data.extract import extract_to_store
    from .data.models import load_model
    from .data.store import ActivationStore

    out = Path(cfg.out)
    started = time.perf_counter()
    lm = load_model(cfg.model)
    layer = lm.n_layers // 2 if cfg.layer < 0 else cfg.layer
    corpus = load_corpus(cfg.corpus)
    echo(f"[1/3] extracting {cfg.tokens} tokens of layer {layer} from {corpus.name} ({len(corpus)} documents)")
    store_dir = extract_to_store(lm, corpus, out / "activations", layers=[layer], max_tokens=cfg.tokens,
                                 order_seed=cfg.seed)
    del lm  # free the LM before training
    store = ActivationStore(store_dir)
    train_rows, val_rows = store.split(0.1, cfg.seed, layer)
    echo(f"[2/3] training a BAE (d={store.dim}, d'={4 * store.dim}) for {cfg.steps} steps on "
         f"{train_rows.n_rows} tokens; validation on {val_rows.n_rows} tokens of held-out documents")
    train_cfg = TrainConfig(steps=cfg.steps, seed=cfg.seed, eval_every=max(1, cfg.steps // 6),
                            eval_rows=cfg.eval_tokens, checkpoint_every=max(1, cfg.steps // 3))
    loss_cfg = LossConfig(target_fvu=cfg.target_fvu, entropy_weight=cfg.entropy_weight, cov_weight=cfg.cov_weight)
    resume = _check_previous_run(out / "bae", train_cfg, loss_cfg)
    model, stats = train_bae(train_rows, val_rows, out / "bae", cfg=train_cfg, loss=loss_cfg, resume=resume,
                             inputs={"store": str(store_dir), "store_fingerprint": store.manifest.get("fingerprint"),
                                     "layer": layer})
    echo("[3/3] summarising features")
    rows = val_rows.rows(cfg.eval_tokens, seed=cfg.seed)
    meta = val_rows.meta(cfg.eval_tokens, seed=cfg.seed)
    codes = encode_all(model, rows)
    entropy = estimate_entropy(codes)
    rates = firing_rates(codes)
    summary = {
        "n_tokens": store.n_tokens, "n_train_tokens": train_rows.n_rows, "n_eval_tokens": int(rows.shape[0]),
        "layer": layer, "d": store.dim, "d_prime": model.width,
        "target_fvu": cfg.target_fvu, "fvu": stats["fvu"], "cosine": stats["cosine"], "mse": stats["mse"],
        "entropy_bits": entropy.marginal_bits, "entropy_bits_corrected": entropy.marginal_bits_corrected,
        "l0": stats["l0"], "dead": stats["dead"], "constant_on": stats["constant_on"], "dense": stats["dense"],
        "near_constant_on": int(((rates >= 0.99) & (rates < 1)).sum()),
        "top_features": frequent_features(codes, meta.text, cfg.top),
        "seconds": time.perf_counter() - started,
    }
    write_json(out / "summary.json", summary)
    echo(report(summary))
    return summary


def _check_previous_run(run: Path, train_cfg: TrainConfig, loss_cfg: LossConfig) -> bool:
    """True when ``run`` holds a checkpoint of this very training (resume it); refuse one made otherwise."""
    state_file = run / "checkpoint" / "trainer_state.json"
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    saved = (state["loss_config"], state["train_config"]["steps"], state["train_config"]["seed"])
    if saved != (loss_cfg.to_dict(), train_cfg.steps, train_cfg.seed):
        raise BitlensError(f"{run} holds a BAE trained with other settings: remove it or choose another --out")
    return True


def report(s: dict[str, Any]) -> str:
    lines = [
        f"layer {s['layer']}: {s['n_tokens']} tokens extracted, BAE d={s['d']} -> d'={s['d_prime']}",
        f"FVU {s['fvu']:.3f}   cosine {s['cosine']:.3f}   entropy {s['entropy_bits']:.1f} bits   L0 {s['l0']:.1f}",
        f"units: {s['dead']} dead, {s['constant_on']} constant-on, {s['dense']} dense (0.1 < f < 1), "
        f"{s['near_constant_on']} near-constant-on (0.99 <= f < 1)",
        "most frequent features with f < 0.99 (rate, then top tokens as token:count):",
    ]
    for feat in s["top_features"]:
        tokens = "  ".join(f"{show_token(t['token'])}:{t['count']}" for t in feat["top_tokens"][:6])
        lines.append(f"  #{feat['feature']:<5} {feat['firing_rate']:.3f}  {tokens}")
    return "\n".join(lines)
