"""`bitlens demo`: the whole pipeline on the embedded defaults, in a few minutes on a laptop CPU.

Extract ~200k tokens of one middle layer of SmolLM2-135M-Instruct over the State of the Union + Moby-Dick corpus,
train a BAE on them, report reconstruction, entropy and a handful of distinctive features with examples, and write
the feature dashboard (``bitlens dashboard``) into the run folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.entropy import estimate_entropy
from ..analysis.features import firing_rates, frequent_features
from ..data.text import show_token
from ..config import Serializable
from ..io import write_json
from ..training.config import DEFAULT_TARGET_FVU, LossConfig, TrainConfig
from ..training.run import encode_all, resume_or_refuse, train_bae


@dataclass
class DemoConfig(Serializable):
    """Settings of `bitlens demo` (the defaults are the demo)."""

    out: str = "runs/demo"
    """Run folder: activations/, bae/ (the training run), summary.json."""
    model: str = "embedded"
    """Causal LM: 'embedded' (SmolLM2-135M-Instruct) or any model `bitlens extract` accepts."""
    corpus: str = "embedded"
    """Corpus: 'embedded' (State of the Union + Moby-Dick) or any corpus `bitlens extract` accepts."""
    max_tokens: int = 200_000
    """Tokens to extract."""
    layer: int | None = None
    """Layer to extract (hidden_states[L]); none = the model's middle layer."""
    steps: int = 3000
    """BAE training steps (batch 512)."""
    seed: int = 0
    """Seed for the document order, the split and the training."""
    top: int = 20
    """How many of the most frequent non-constant features to list in summary.json."""
    show: int = 6
    """Distinctive features to print with examples: half with the best lexical-rule F1, half most concentrated on
    one token."""
    dashboard: bool = True
    """Write the feature dashboard into OUT/dashboard at the end (about 2 minutes on 2 cores)."""
    eval_tokens: int = 50_000
    """Validation tokens used for the report."""
    target_fvu: float = DEFAULT_TARGET_FVU
    """Target FVU of the BAE: its entropy is minimised subject to FVU <= F (dual ascent on the entropy weight);
    0 = the fixed weights below."""
    entropy_weight: float = 1.0
    """Entropy weight (scale_free, per unit): the starting weight with a target FVU, else the fixed one."""
    cov_weight: float = 100.0
    """Covariance weight (scale_free, per pair); scaled with the entropy weight under a target FVU."""
    val_fraction: float = 0.1
    """Fraction of documents held out for validation and the report."""
    device: str = "cpu"
    """Device for the LM and the BAE: cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show progress bars."""


def run_demo(cfg: DemoConfig, echo=logging.getLogger(__name__).info) -> dict[str, Any]:
    from ..data.corpora import load_corpus
    from ..data.extract import extract_to_store
    from ..data.models import load_model
    from ..data.store import ActivationStore

    out = Path(cfg.out)
    started = time.perf_counter()
    lm = load_model(cfg.model, device=cfg.device)
    layer = lm.n_layers // 2 if cfg.layer is None else cfg.layer
    corpus = load_corpus(cfg.corpus)
    stages = 4 if cfg.dashboard else 3  # the dashboard (stage 4) is written by bitlens.api.demo / `bitlens demo`
    echo(f"[1/{stages}] extracting {cfg.max_tokens} tokens of layer {layer} from {corpus.name} ({len(corpus)} documents)")
    store_dir = extract_to_store(lm, corpus, out / "activations", layers=[layer], max_tokens=cfg.max_tokens,
                                 order_seed=cfg.seed, progress=cfg.progress)
    del lm  # free the LM before training
    store = ActivationStore(store_dir)
    train_rows, val_rows = store.split(cfg.val_fraction, cfg.seed, layer)
    echo(f"[2/{stages}] training a BAE (d={store.dim}, d'={4 * store.dim}) for {cfg.steps} steps on "
         f"{train_rows.n_rows} tokens; validation on {val_rows.n_rows} tokens of held-out documents")
    train_cfg = TrainConfig(steps=cfg.steps, seed=cfg.seed, eval_every=max(1, cfg.steps // 6),
                            eval_tokens=cfg.eval_tokens, checkpoint_every=max(1, cfg.steps // 3),
                            val_fraction=cfg.val_fraction, device=cfg.device, progress=cfg.progress)
    loss_cfg = LossConfig(target_fvu=cfg.target_fvu, entropy_weight=cfg.entropy_weight, cov_weight=cfg.cov_weight)
    resume = resume_or_refuse(out / "bae", {"train": train_cfg.settings(), "loss": loss_cfg.to_dict()}, "BAE") != "new"
    model, stats = train_bae(train_rows, val_rows, out / "bae", cfg=train_cfg, loss=loss_cfg, resume=resume,
                             inputs={"store": str(store_dir), "store_fingerprint": store.manifest.get("fingerprint"),
                                     "layer": layer})
    echo(f"[3/{stages}] summarising features")
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
    return summary  # the dashboard and the printed report come from bitlens.api.demo (it sits above report/)


def distinctive(rows: list[dict[str, Any]], n: int, min_tokens: int = 20,
                max_prevalence: float = 0.05) -> list[dict[str, Any]]:
    """``n`` features worth a first look, from the dashboard's rows: half with the highest lexical-rule F1, half
    with the largest share of their minority-state tokens on one token (ties: more tokens first). Only features with
    at least ``min_tokens`` minority-state tokens and a minority state on at most ``max_prevalence`` of the tokens
    are eligible: for a common state even the rule "every token" reaches F1 = 2p / (1 + p) (0.67 at p = 0.5)."""
    pool = [r for r in rows
            if r["n_minority"] >= min_tokens and min(r["rate"], 1 - r["rate"]) <= max_prevalence]
    by_f1 = sorted(pool, key=lambda r: (-r["lexical_f1"], -r["n_minority"], r["feature"]))[:(n + 1) // 2]
    taken = {r["feature"] for r in by_f1}
    by_token = sorted((r for r in pool if r["feature"] not in taken),
                      key=lambda r: (-r["concentration"], -r["n_minority"], r["feature"]))[:n // 2]
    return [{**r, "why": why} for why, group in (("lexical F1", by_f1), ("one-token share", by_token)) for r in group]


def _around_target(example: str, before: int = 70, after: int = 30) -> str:
    """The part of a context around its ⟦target⟧, for a one-line printout."""
    i = max(example.find("⟦"), 0)
    j = example.find("⟧", i) + 1 or len(example)
    head = "…" if i > before else ""
    return head + example[max(0, i - before):j + after] + ("…" if j + after < len(example) else "")


def report(s: dict[str, Any]) -> str:
    lines = [
        f"layer {s['layer']}: {s['n_tokens']} tokens extracted, BAE d={s['d']} -> d'={s['d_prime']}",
        f"FVU {s['fvu']:.3f}   cosine {s['cosine']:.3f}   entropy {s['entropy_bits']:.1f} bits   L0 {s['l0']:.1f}",
        f"units: {s['dead']} dead, {s['constant_on']} constant-on, {s['dense']} dense (0.1 < f < 1), "
        f"{s['near_constant_on']} near-constant-on (0.99 <= f < 1)",
    ]
    if s.get("distinctive_features"):
        lines.append("distinctive features (minority state; rule = best 'token in S' for it; ⟦target⟧ in context):")
        for feat in s["distinctive_features"]:
            rule = " ".join(show_token(t) for t in feat["lexical_tokens"][:4])
            top = feat["top_tokens"][0]
            lines.append(f"  #{feat['feature']:<5} [{feat['why']}] f={feat['rate']:.2e} {feat['polarity'].upper()}  "
                         f"rule {{{rule}}} F1 {feat['lexical_f1']:.2f}  top token {show_token(top['text'])} "
                         f"({feat['concentration']:.0%} of its tokens)")
            lines += [f"      {_around_target(example)}" for example in feat["examples"][:3]]
    else:
        lines.append("most frequent features with f < 0.99 (rate, then top tokens as token:count):")
        for feat in s["top_features"]:
            tokens = "  ".join(f"{show_token(t['token'])}:{t['count']}" for t in feat["top_tokens"][:6])
            lines.append(f"  #{feat['feature']:<5} {feat['firing_rate']:.3f}  {tokens}")
    if s.get("dashboard"):
        lines.append(f"dashboard: {s['dashboard']}")
    return "\n".join(lines)
