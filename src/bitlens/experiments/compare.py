"""`bitlens compare`: the BAE and every baseline at the same width on one store and layer, side by side.

Stages, each cached in the output folder so an interrupted run resumes without redoing finished work:

1. train each coder (``coders/<name>/``: the usual run folder; an unfinished one is resumed from its checkpoint);
   the transcoder needs MLP sites: taken from the store when it has them, else extracted once for the same
   documents (same model, corpus, order, budget) into a side store ``sites/`` (itself resumable);
2. statistics on held-out tokens (``coders/<name>/eval.json`` + ``frequencies.npy``);
3. splicing into the LM on held-out documents (``splice.json``);
4. ``compare.json`` (list ``coders``), ``compare.md`` (the table), ``frequencies.png``, ``units.png``.

Coders (d' = 4d for all): ``bae`` (``llm_loss``: trained to ``--target-fvu``, or with ``--match-fvu`` to the SAEs'
median FVU, ``match.py``), ``relu_sae`` (ReLU + L1), ``topk_sae`` (ReLU then TopK of W(x - b_dec), AuxK, unit-norm
decoder), ``jumprelu_sae`` (learned thresholds, at TopK's L0), ``random`` (random features at the BAE's firing rates, trained
decoder), ``transcoder`` (MLP input -> MLP output of block L; ``transcoder_variant=official``: MLP input of block
L-1 -> hidden_states[L] with an identity activation, as the official code). A JSON ``--config`` file overrides any
coder's settings: ``{"topk_sae": {"coder": {"k": 64}, "train": {"steps": 5000}, "loss": {...}}, "splice": {...}}``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import BitlensError, write_json, write_manifest, write_text
from .compare_config import CoderPlan, CompareConfig, _load_overrides, coder_plans
# defined here before compare_config.py: still importable from here
from .compare_config import CODERS as CODERS, DEFAULT_STEPS as DEFAULT_STEPS, CoderName as CoderName, Variant as Variant


# ----------------------------------------------------------------------------------------------- training


def _train_one(plan: CoderPlan, run: Path, train_rows, val_rows, prepare=None, inputs=None, world=None):
    """Train, resume or reuse the coder in ``run``; refuse a folder trained with other settings. Under torchrun
    (``world``) process 0 looks at the folder first (and records the settings), then the others."""
    from ..coders.registry import load
    from ..training.distributed import SINGLE
    from ..training.run import resume_or_refuse, train_coder

    world = world or SINGLE
    settings = {"architecture": plan.architecture, "coder": plan.coder.to_dict(),
                "train": plan.train.settings(),
                "loss": plan.loss.to_dict()}
    state = resume_or_refuse(run, settings, plan.name) if world.main else None
    world.barrier()
    state = state or resume_or_refuse(run, settings, plan.name)
    if state == "finished":
        return load(run), "reused"
    resume = state == "resume"
    model, _ = train_coder(plan.architecture, train_rows, val_rows, run, plan.coder, plan.train, plan.loss,
                           resume=resume, inputs=inputs, prepare=prepare)
    return model, "resumed" if resume else "trained"


def _sites_needed(cfg: CompareConfig, layer: int) -> tuple[list[int], list[str], str, Any]:
    """(layers, sites, read key, target key) the transcoder variant trains on."""
    if cfg.transcoder_variant == "mlp":
        return [], [f"mlp_in.{layer}", f"mlp_out.{layer}"], f"mlp_in.{layer}", f"mlp_out.{layer}"
    if layer < 1:
        raise BitlensError("the official transcoder variant reads block L-1's MLP input: needs layer >= 1")
    return [layer], [f"mlp_in.{layer - 1}"], f"mlp_in.{layer - 1}", layer


def site_store(store, cfg: CompareConfig, layer: int, out: Path, echo):
    """A store holding the transcoder's sites for the same tokens as ``store``: the store itself when it has
    them, else a side store extracted (once, resumably) with the same model, corpus and settings."""
    from ..data.store import ActivationStore

    layers, sites, _, _ = _sites_needed(cfg, layer)
    if all(s in store.sites for s in sites) and all(lay in store.layers for lay in layers):
        return store
    side = out / "sites"
    if (side / "manifest.json").exists():
        try:
            existing = ActivationStore(side)
            if all(s in existing.sites for s in sites) and all(lay in existing.layers for lay in layers):
                return _check_aligned(store, existing)
        except BitlensError:
            pass  # unfinished: extract_to_store resumes it below
    from ..data.extract import extract_to_store
    from ..data.models import load_model

    s = store.manifest["settings"]
    echo(f"the store has no {', '.join(sites)}: extracting them for the same {store.n_tokens} tokens into {side}")
    lm = load_model(s["model"]["name"], dtype=s["model"]["dtype"], device=cfg.device)
    _check_model(lm, s)
    corpus = _load_store_corpus(s)
    extract_to_store(lm, corpus, side, layers=layers, sites=sites, max_seq_len=s["max_seq_len"], dtype=s["dtype"],
                     max_tokens=s["max_tokens"], include_first=not s["exclude_first"], order_seed=s["order_seed"],
                     shard_rows=store.manifest["shard_rows"], progress=cfg.progress)
    return _check_aligned(store, ActivationStore(side))


def _check_aligned(store, side):
    if side.n_tokens != store.n_tokens or not np.array_equal(side.meta, store.meta):
        raise BitlensError(f"side store {side.path} does not hold the same tokens as {store.path}; remove it")
    return side


def _check_model(lm, settings: dict) -> None:
    if lm.fingerprint != settings["model"]["fingerprint"]:
        raise BitlensError(f"model {settings['model']['name']!r} is not the one the store was extracted with "
                           "(fingerprint differs)")


def _load_store_corpus(settings: dict):
    from ..data.corpora import load_corpus

    corpus = load_corpus(settings["corpus"]["name"])
    if corpus.fingerprint != settings["corpus"]["fingerprint"]:
        raise BitlensError(f"corpus {settings['corpus']['name']!r} differs from the one the store was extracted from")
    return corpus


# ----------------------------------------------------------------------------------------------- evaluation


def _evaluate(model, run: Path, rows: torch.Tensor, targets: torch.Tensor | None,
              cofiring: bool = True) -> dict[str, Any]:
    from ..analysis.statistics import evaluate_coder

    cached = run / "eval.json"
    step = json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"]
    if cached.exists() and (run / "frequencies.npy").exists():
        stats = json.loads(cached.read_text())
        if stats.get("step") == step and stats.get("n_rows") == rows.shape[0]:
            return stats
    ev = evaluate_coder(model, rows, targets, cofiring=cofiring)
    np.save(run / "frequencies.npy", ev.frequencies)
    stats = {**ev.stats, "step": step}
    write_json(cached, stats)
    return stats


def run_compare(cfg: CompareConfig, echo=logging.getLogger(__name__).info) -> dict[str, Any]:
    from ..analysis.statistics import firing_frequencies
    from ..data.sources import PairedRows
    from ..data.store import ActivationStore

    from ..training.distributed import current_world

    started = time.perf_counter()
    timings: dict[str, float] = {}
    # under torchrun every process trains each coder on its share of the batches; process 0 alone evaluates,
    # splices and writes the summary
    world = current_world(cfg.device)
    overrides = _load_overrides(cfg.config)
    plans = coder_plans(cfg, overrides)
    if cfg.match_fvu:
        from .match import match_order, matched_plan

        plans = match_order(plans)
    store = ActivationStore(cfg.store)
    layer = store.default_layer(cfg.layer)
    if not isinstance(layer, int):
        raise BitlensError(f"compare needs a residual layer of the store (hidden_states[L]), not the site {layer}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if world.main:
        coders = {p.name: {"coder": p.coder.to_dict(), "train": p.train.to_dict(), "loss": p.loss.to_dict()}
                  for p in plans}
        write_manifest(out, command="compare", config={"compare": cfg.to_dict(), "overrides": overrides,
                                                       "coders": coders},
                       seeds={"seed": cfg.seed}, inputs={"store": str(cfg.store), "layer": layer,
                                                         "store_settings": store.manifest.get("settings")})
    train_rows, val_rows = store.split(cfg.val_fraction, cfg.seed, layer)
    eval_x = val_rows.rows(cfg.eval_tokens, seed=cfg.seed)
    inputs = {"store": str(cfg.store), "layer": layer}
    models: dict[str, torch.nn.Module] = {}
    stats: dict[str, dict[str, Any]] = {}
    freqs: dict[str, np.ndarray] = {}
    sites = None
    for i, plan in enumerate(plans, 1):
        t0 = time.perf_counter()
        run = out / "coders" / plan.name
        if cfg.match_fvu and plan.name == "bae":
            plan = plans[i - 1] = matched_plan(plan, stats)
            echo(f"matching the SAEs' median FVU: BAE target {plan.loss.target_fvu:.4f}")
        echo(f"[{i}/{len(plans)}] {plan.name}: {plan.train.steps} steps")
        if plan.name == "transcoder":
            if world.main:  # extracts the side store if needed; the others then find it complete
                sites = site_store(store, cfg, layer, out, echo)
            world.barrier()
            sites = sites if world.main else site_store(store, cfg, layer, out, echo)
            _, _, read, target = _sites_needed(cfg, layer)
            tr_in, va_in = sites.split(cfg.val_fraction, cfg.seed, read)
            tr, va = PairedRows(tr_in, tr_in.at(target)), PairedRows(va_in, va_in.at(target))
            model, how = _train_one(plan, run, tr, va, inputs={**inputs, "site_store": str(sites.path),
                                                                "read": read, "target": target}, world=world)
            if world.main:
                stats[plan.name] = _evaluate(model, run, va_in.rows(cfg.eval_tokens, seed=cfg.seed),
                                             va_in.at(target).rows(cfg.eval_tokens, seed=cfg.seed))
        else:
            prepare = None
            if plan.name == "random":
                def prepare(m, bae=models["bae"]):  # only for a fresh run: the rates cost an encoding pass
                    sample = train_rows.rows(65536, seed=cfg.seed)
                    m.match_rates(sample, firing_frequencies(bae, sample).float())
            model, how = _train_one(plan, run, train_rows, val_rows, prepare=prepare, inputs=inputs, world=world)
            if world.main:
                stats[plan.name] = _evaluate(model, run, eval_x, None)
        models[plan.name] = model
        if not world.main:
            continue
        freqs[plan.name] = np.load(run / "frequencies.npy")
        timings[plan.name] = time.perf_counter() - t0
        s = stats[plan.name]
        echo(f"    {how}: FVU {s['fvu']:.3f}, L0 {s['l0']:.1f}, dead {s['dead']}, dense {s['dense']} "
             f"({timings[plan.name]:.0f}s)")

    if not world.main:
        world.barrier()  # until process 0 has written the summary
        return {}
    t0 = time.perf_counter()
    splice = _splice_all(cfg, overrides.get("splice", {}), store, sites, layer, models, train_rows, val_rows, out,
                         echo) if cfg.splice_tokens > 0 else {}
    timings["splice"] = time.perf_counter() - t0

    rows = [_table_row(p.name, stats[p.name], splice.get(p.name, {})) for p in plans]
    summary = {"store": str(cfg.store), "layer": layer, "d": store.dim, "eval_tokens": int(eval_x.shape[0]),
               "transcoder_variant": cfg.transcoder_variant, "splice_positions": cfg.splice_positions,
               "bae_target_fvu": next((p.loss.target_fvu for p in plans if p.name == "bae"), None),
               "coders": rows, "details": {p.name: {"stats": stats[p.name], "splice": splice.get(p.name, {})}
                                           for p in plans},
               "seconds_this_run": {**timings, "total": time.perf_counter() - started}}
    from .plots import plot_frequency_histograms, plot_unit_counts

    plot_frequency_histograms(freqs, out / "frequencies.png")
    plot_unit_counts(rows, out / "units.png")
    write_json(out / "compare.json", summary)
    write_text(out / "compare.md", markdown_table(rows))
    echo(markdown_table(rows))
    world.barrier()
    return summary


def _splice_all(cfg, extra: dict, store, sites, layer: int, models: dict, train_rows, val_rows, out: Path, echo):
    from ..analysis.splice import SpliceConfig, Variant, ablations, held_out_sequences, splice_evaluate, summarize
    from ..data.models import load_model

    try:
        scfg = SpliceConfig.from_dict({"tokens": cfg.splice_tokens, "positions": cfg.splice_positions, **extra})
    except (ValueError, TypeError) as e:
        raise BitlensError(f"splice config: {e}") from e
    key = {"splice": scfg.to_dict(), "coders": {n: json.loads((out / "coders" / n / "eval.json").read_text())["step"]
                                                for n in models}, "seed": cfg.seed,
           "transcoder_variant": cfg.transcoder_variant}
    cached = out / "splice.json"
    if cached.exists():
        data = json.loads(cached.read_text())
        if data.get("key") == json.loads(json.dumps(key)):
            return data["results"]
    echo(f"splicing {len(models)} coders into the LM at layer {layer} ({scfg.positions} positions, "
         f"{scfg.tokens} predictions each)")
    s = store.manifest["settings"]
    lm = load_model(s["model"]["name"], dtype=s["model"]["dtype"], device=cfg.device)
    _check_model(lm, s)
    corpus = _load_store_corpus(s)
    docs = [corpus.documents[i] for i in val_rows.doc_indices]
    seqs = held_out_sequences(lm, docs, scfg.max_seq_len, scfg.tokens, scfg.positions)
    resid = f"resid.{layer}"
    mean = torch.tensor(store.stats(layer)["mean"], dtype=torch.float32)
    variants = dict(ablations(resid, mean))
    write_site = {}
    for name, model in models.items():
        model.eval()
        fn = (lambda x, m=model: m(x).reconstruction)
        if name == "transcoder":
            _, _, read, target = _sites_needed(cfg, layer)
            write = f"mlp_out.{layer}" if cfg.transcoder_variant == "mlp" else resid
            if write != resid:
                variants.update(ablations(write, torch.tensor(sites.stats(write)["mean"], dtype=torch.float32)))
            variants[name] = Variant(read, write, fn)
        else:
            write = resid
            variants[name] = Variant(resid, resid, fn)
        write_site[name] = write
    results = splice_evaluate(lm, seqs, variants, scfg, progress=cfg.progress)
    summary = {name: {**summarize(results, name, f"zero:{w}", f"mean:{w}"), "site": w}
               for name, w in write_site.items()}
    summary["ablations"] = {k: v for k, v in results.items() if ":" in k or k == "clean"}
    write_json(cached, {"key": key, "results": summary})
    return summary


COLUMNS = ("name", "fvu", "mse", "cosine", "relative_norm", "l0", "dead_frac", "dense_frac", "dense_half_frac",
           "constant_on_frac", "entropy_bits", "kl", "jsd", "ce_increase", "ce_recovered", "ce_recovered_mean")


def _table_row(name: str, s: dict[str, Any], sp: dict[str, Any]) -> dict[str, Any]:
    width = s["width"]
    nan = float("nan")
    return {"name": name, "fvu": s["fvu"], "mse": s["mse"], "cosine": s["cosine"], "relative_norm": s["relative_norm"],
            "l0": s["l0"], "dead_frac": s["dead"] / width, "dense_frac": s["dense"] / width,
            "dense_half_frac": s["dense_half"] / width, "constant_on_frac": s["constant_on"] / width,
            "entropy_bits": s["entropy_bits"], "kl": sp.get("kl", nan), "jsd": sp.get("jsd", nan),
            "ce_increase": sp.get("ce_increase", nan), "ce_recovered": sp.get("ce_recovered", nan),
            "ce_recovered_mean": sp.get("ce_recovered_mean", nan), "splice_site": sp.get("site"),
            "width": width}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"

    def fmt(v):
        return v if isinstance(v, str) else f"{v:.4g}"
    return head + "".join("| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |\n" for r in rows)
