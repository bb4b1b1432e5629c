"""`bitlens sweep`: every coder at several sparsity settings on one store and layer, read as frontiers.

The field compares sparse coders on frontiers (reconstruction against sparsity, several settings per architecture:
SAEBench, Gao et al. 2024), never one setting each. The sweep trains each coder along a ladder of settings, from
the sparsest to the densest:

| coder | setting | ladder (default) |
|---|---|---|
| ``bae`` | target FVU (dual ascent on the entropy weight, ``llm_loss``) | 0.35, 0.30, 0.25, 0.20, 0.15 |
| ``bae`` ``paper`` | the official recipe (``--preset paper``: weights 1e-7, raw inputs), a point of its own | one point |
| ``topk_sae`` | k (AuxK and unit-norm decoder columns, ``coders/sae.py``) | 8, 16, 32, 64, 128 |
| ``relu_sae`` | L1 weight | 0.4, 0.2, 0.1, 0.05, 0.025 |
| ``jumprelu_sae`` | target L0 (TopK's k by default; thresholds start at that L0) | 8, 16, 32, 64, 128 |

Each point is a run folder ``points/<coder>/<label>/`` trained, evaluated and spliced with `bitlens compare`'s own
steps (``compare._train_one``, ``compare._evaluate``) on the same held-out documents, plus the mean lexical-baseline
F1 of its features (``analysis/lexical.py``: each rule chosen on half the held-out tokens, scored on the other). Every stage of every point is cached in its folder, so an interrupted
sweep resumes point by point and a rerun trains nothing. Splicing runs once per coder for the points that lack it
(the clean run is shared; the zero/mean ablations are cached once for the sweep).

Outputs: ``sweep.json`` (``points``: coder, setting, fvu, l0, l0_minority, entropy_bits, dead_frac, dense_frac,
dense_half_frac, constant_on_frac, ce_recovered, kl, lexical_f1, ...; ``coders``: whether FVU is monotone along
each ladder, with a note when not; ``matched``: every coder's unit fractions interpolated at shared FVUs), and the
four frontier plots of ``frontier_plots.py``.
"""

from __future__ import annotations

import json
import logging
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import Serializable
from ..io import BitlensError, write_json, write_manifest
from .compare import CoderPlan, _evaluate, _train_one
from .frontier import matched_fvu, monotonicity

SweepCoder = Literal["bae", "relu_sae", "topk_sae", "jumprelu_sae"]
SWEEP_CODERS: tuple[str, ...] = typing.get_args(SweepCoder)


@dataclass
class SweepConfig(Serializable):
    """Settings of `bitlens sweep`."""

    store: str
    """Activation store written by `bitlens extract`."""
    layer: int | None = None
    """Layer L of the store (hidden_states[L]); none = the store's only layer."""
    out: str = "runs/sweep"
    """Output folder (sweep.json, frontier_*.png, points/<coder>/<setting>/)."""
    coders: list[SweepCoder] = field(default_factory=lambda: list(SWEEP_CODERS))
    """Which coders to sweep."""
    points: int = 5
    """Settings per coder, spread evenly over each ladder (at most the ladder's length)."""
    bae_targets: list[float] = field(default_factory=lambda: [0.35, 0.3, 0.25, 0.2, 0.15])
    """bae: the target FVUs (entropy minimised subject to FVU <= target, by dual ascent)."""
    paper_point: bool = True
    """bae: also train the official recipe (--preset paper: weights 1e-7, raw inputs, official surrogate) as a point
    of its own."""
    topk_ks: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    """topk_sae: the k values (with AuxK and unit-norm decoder columns)."""
    relu_l1: list[float] = field(default_factory=lambda: [0.4, 0.2, 0.1, 0.05, 0.025])
    """relu_sae: the L1 weights."""
    jumprelu_l0: list[float] = field(default_factory=list)
    """jumprelu_sae: the target L0s; empty = the TopK k values, so both span the same L0 range."""
    steps: int = 300
    """Training steps of every point (short, so 4 coders x 5 points + the paper point fit a shared 2-core machine:
    timings in BENCHMARKS.md; raise it for converged frontiers)."""
    batch_size: int = 256
    """Rows per step (the BAE's entropy is a batch statistic: keep >= 256)."""
    eval_tokens: int = 25000
    """Held-out tokens for the statistics and the lexical baseline."""
    splice_tokens: int = 2048
    """Next-token predictions per spliced point (held-out documents); 0 = no splicing."""
    splice_positions: Literal["all", "last"] = "all"
    """Splice at all positions, or the last position only (the official script)."""
    seed: int = 0
    """Seed of the train/validation split (by document) and of every point."""
    val_fraction: float = 0.1
    """Fraction of the store's documents held out for the statistics and splicing."""
    device: str = "cpu"
    """Device for training and splicing: cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.coders) - set(SWEEP_CODERS))
        if unknown:
            raise ValueError(f"unknown coder(s) {', '.join(unknown)}; choose from {', '.join(SWEEP_CODERS)}")
        if self.points < 1 or self.steps < 1 or self.batch_size < 2:
            raise ValueError("points and steps must be >= 1 and batch_size >= 2")
        ladders = {"bae_targets": self.bae_targets, "topk_ks": self.topk_ks, "relu_l1": self.relu_l1,
                   "jumprelu_l0": self.jumprelu_l0 or self.topk_ks}
        for name, ladder in ladders.items():
            if len(ladder) < self.points:
                raise ValueError(f"{name} has {len(ladder)} values but points is {self.points}")
            if len(set(ladder)) != len(ladder) or any(v <= 0 for v in ladder):
                raise ValueError(f"{name} must hold distinct positive values")
        if any(not 0 < t < 1 for t in self.bae_targets):
            raise ValueError("bae_targets must lie in (0, 1)")


@dataclass
class Point:
    coder: str
    label: str
    setting: dict[str, Any]
    plan: CoderPlan


def _spread(values: list, n: int) -> list:
    """n values spread evenly over ``values`` (first and last included)."""
    return [values[i] for i in sorted({int(round(i)) for i in np.linspace(0, len(values) - 1, n)})]


def sweep_points(cfg: SweepConfig) -> list[Point]:
    """Every point of the sweep, per coder from the sparsest setting to the densest (the paper point last)."""
    from ..coders.bae import BAEConfig
    from ..coders.sae import SAEConfig
    from ..training.config import LossConfig, TrainConfig, apply_preset, llm_loss
    from ..training.sae_objective import SparsityConfig

    train = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed, eval_every=cfg.steps,
                        eval_tokens=4096, checkpoint_every=max(1, cfg.steps // 4), device=cfg.device,
                        progress=cfg.progress)
    points = []
    for coder in cfg.coders:
        if coder == "bae":
            for t in _spread(sorted(cfg.bae_targets, reverse=True), cfg.points):
                points.append(Point(coder, f"target_fvu_{t:g}", {"target_fvu": t},
                                    CoderPlan(coder, coder, BAEConfig(), train, llm_loss(t))))
            if cfg.paper_point:
                bae, tr, loss = apply_preset("paper", BAEConfig(), train, LossConfig())
                points.append(Point(coder, "paper", {"preset": "paper"}, CoderPlan(coder, coder, bae, tr, loss)))
        elif coder == "topk_sae":
            for k in _spread(sorted(cfg.topk_ks), cfg.points):
                points.append(Point(coder, f"k_{k}", {"k": k},
                                    CoderPlan(coder, coder, SAEConfig(k=k), train, SparsityConfig())))
        elif coder == "relu_sae":
            for w in _spread(sorted(cfg.relu_l1, reverse=True), cfg.points):
                points.append(Point(coder, f"l1_{w:g}", {"l1_weight": w},
                                    CoderPlan(coder, coder, SAEConfig(), train, SparsityConfig(weight=w))))
        else:
            for t in _spread(sorted(cfg.jumprelu_l0 or cfg.topk_ks), cfg.points):
                points.append(Point(coder, f"target_l0_{t:g}", {"target_l0": t},
                                    CoderPlan(coder, coder, SAEConfig(init_l0=float(t)), train,
                                              SparsityConfig(target_l0=float(t)))))
    return points


def _lexical(model, run: Path, rows: torch.Tensor, token: np.ndarray, step: int) -> dict[str, Any]:
    """Mean lexical-baseline F1 of the point's features on the held-out tokens (cached in lexical.json)."""
    from ..analysis.lexical import mean_lexical_f1
    from ..training.run import encode_all

    cached = run / "lexical.json"
    if cached.exists():
        data = json.loads(cached.read_text())
        if data.get("step") == step and data.get("n_rows") == len(token) and data.get("held_out"):
            return data
    data = {**mean_lexical_f1(encode_all(model, rows), token), "step": step, "n_rows": len(token)}
    write_json(cached, data)
    return data


class _Splicer:
    """Splices points into the LM, a coder's missing points in one pass; results cached per point."""

    def __init__(self, cfg: SweepConfig, store, layer: int, val_rows, out: Path, echo):
        from ..analysis.splice import SpliceConfig

        self.cfg, self.store, self.layer, self.val_rows, self.out, self.echo = cfg, store, layer, val_rows, out, echo
        self.scfg = SpliceConfig(tokens=cfg.splice_tokens, positions=cfg.splice_positions)
        self.lm = self.seqs = None

    def key(self, step: int) -> dict[str, Any]:
        return json.loads(json.dumps({"splice": self.scfg.to_dict(), "step": step, "seed": self.cfg.seed,
                                      "layer": self.layer}))

    def cached(self, run: Path, step: int) -> dict[str, Any] | None:
        file = run / "splice.json"
        if file.exists():
            data = json.loads(file.read_text())
            if data.get("key") == self.key(step):
                return data["results"]
        return None

    def run(self, todo: list[tuple[Path, int, torch.nn.Module]]) -> None:
        """Splice every (run folder, step, model) of ``todo`` and write each one's splice.json."""
        from ..analysis.splice import Variant, ablations, held_out_sequences, splice_evaluate, summarize
        from .compare import _check_model, _load_store_corpus

        if self.lm is None:
            from ..data.models import load_model

            s = self.store.manifest["settings"]
            self.lm = load_model(s["model"]["name"], dtype=s["model"]["dtype"], device=self.cfg.device)
            _check_model(self.lm, s)
            corpus = _load_store_corpus(s)
            docs = [corpus.documents[i] for i in self.val_rows.doc_indices]
            self.seqs = held_out_sequences(self.lm, docs, self.scfg.max_seq_len, self.scfg.tokens, self.scfg.positions)
        resid = f"resid.{self.layer}"
        base_file = self.out / "splice_ablations.json"
        base_key = self.key(-1)
        base = json.loads(base_file.read_text()) if base_file.exists() else {}
        variants = {}
        if base.get("key") != base_key:
            mean = torch.tensor(self.store.stats(self.layer)["mean"], dtype=torch.float32)
            variants.update(ablations(resid, mean))
        for i, (_, _, model) in enumerate(todo):
            model.eval()
            variants[f"p{i}"] = Variant(resid, resid, lambda x, m=model: m(x).reconstruction)
        self.echo(f"    splicing {len(todo)} point(s) into the LM at layer {self.layer}")
        results = splice_evaluate(self.lm, self.seqs, variants, self.scfg, progress=self.cfg.progress)
        if base.get("key") != base_key:
            base = {"key": base_key, "results": {k: v for k, v in results.items() if ":" in k}}
            write_json(base_file, base)
        results.update(base["results"])
        for i, (run, step, _) in enumerate(todo):
            write_json(run / "splice.json", {"key": self.key(step),
                                             "results": summarize(results, f"p{i}", f"zero:{resid}", f"mean:{resid}")})


def _row(point: Point, run: Path, stats: dict[str, Any], lexical: dict[str, Any], splice: dict[str, Any] | None,
         how: str) -> dict[str, Any]:
    width = stats["width"]
    nan = float("nan")
    sp = splice or {}
    return {"coder": point.coder, "label": point.label, "setting": point.setting, "steps": stats["step"],
            "fvu": stats["fvu"], "l0": stats["l0"], "l0_minority": stats["l0_minority"],
            "entropy_bits": stats["entropy_bits"], "dead_frac": stats["dead"] / width,
            "dense_frac": stats["dense"] / width, "dense_half_frac": stats["dense_half"] / width,
            "constant_on_frac": stats["constant_on"] / width, "ce_recovered": sp.get("ce_recovered", nan),
            "ce_recovered_mean": sp.get("ce_recovered_mean", nan), "kl": sp.get("kl", nan),
            "lexical_f1": lexical["mean_f1"], "lexical_features": lexical["n"], "cosine": stats["cosine"],
            "width": width, "run": str(run), "this_run": how}


def run_sweep(cfg: SweepConfig, echo=logging.getLogger(__name__).info) -> dict[str, Any]:
    from ..data.store import ActivationStore
    from .frontier_plots import plot_frontiers

    started = time.perf_counter()
    points = sweep_points(cfg)
    store = ActivationStore(cfg.store)
    layer = store.default_layer(cfg.layer)
    if not isinstance(layer, int):
        raise BitlensError(f"sweep needs a residual layer of the store (hidden_states[L]), not the site {layer}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, command="sweep", config={"sweep": cfg.to_dict(), "points": {
        f"{p.coder}/{p.label}": {"coder": p.plan.coder.to_dict(), "train": p.plan.train.to_dict(),
                                 "loss": p.plan.loss.to_dict()} for p in points}},
        seeds={"seed": cfg.seed}, inputs={"store": str(cfg.store), "layer": layer,
                                          "store_settings": store.manifest.get("settings")})
    train_rows, val_rows = store.split(cfg.val_fraction, cfg.seed, layer)
    eval_x = val_rows.rows(cfg.eval_tokens, seed=cfg.seed)
    eval_token = val_rows.meta(cfg.eval_tokens, seed=cfg.seed).token
    inputs = {"store": str(cfg.store), "layer": layer}
    splicer = _Splicer(cfg, store, layer, val_rows, out, echo) if cfg.splice_tokens > 0 else None
    rows: list[dict[str, Any]] = []
    trained = 0
    for coder in cfg.coders:
        group = [p for p in points if p.coder == coder]
        done: list[tuple[Point, Path, dict, dict, str]] = []
        todo = []
        for point in group:
            t0 = time.perf_counter()
            run = out / "points" / coder / point.label
            echo(f"{coder} {point.label}: {point.plan.train.steps} steps")
            model, how = _train_one(point.plan, run, train_rows, val_rows, inputs=inputs)
            trained += how != "reused"
            stats = _evaluate(model, run, eval_x, None, cofiring=False)
            lexical = _lexical(model, run, eval_x, eval_token, stats["step"])
            echo(f"    {how}: FVU {stats['fvu']:.3f}, L0 {stats['l0']:.1f}, dead {stats['dead']}, dense "
                 f"{stats['dense']}, lexical F1 {lexical['mean_f1']:.3f} ({time.perf_counter() - t0:.0f}s)")
            if splicer is not None and splicer.cached(run, stats["step"]) is None:
                todo.append((run, stats["step"], model))
            done.append((point, run, stats, lexical, how))
        if todo:
            splicer.run(todo)
        for point, run, stats, lexical, how in done:
            splice = splicer.cached(run, stats["step"]) if splicer is not None else None
            rows.append(_row(point, run, stats, lexical, splice, how))
    summary = {"store": str(cfg.store), "layer": layer, "d": store.dim, "eval_tokens": int(eval_x.shape[0]),
               "steps": cfg.steps, "batch_size": cfg.batch_size, "splice_tokens": cfg.splice_tokens,
               "points": rows, "coders": monotonicity(rows), "matched": matched_fvu(rows),
               "trained_this_run": trained, "seconds_this_run": time.perf_counter() - started}
    plot_frontiers(rows, out)
    write_json(out / "sweep.json", summary)
    for name, mono in summary["coders"].items():
        echo(f"{name}: FVU {'monotone' if mono['monotone'] else 'NOT monotone'} in its setting"
             + (f" ({mono['note']})" if mono["note"] else ""))
    return summary
