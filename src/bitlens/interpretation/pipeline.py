"""`bitlens interpret`: choose features, sample examples, explain, judge, score, control, write results.

Every (feature, stage) result is a work unit committed as it finishes; every LLM reply is cached. A rerun of an
interrupted (or budget-stopped) run therefore skips finished units and replays cached replies, making no
duplicate call; a rerun of a finished run makes none at all."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from ..data.store import ActivationStore
from ..devices import resolve_device
from ..io import BitlensError, check_out_dir, file_fingerprint, write_manifest
from . import comsem, detection
from .activations import activations, scan
from .backends import Backend, BackendFatal, make_backend
from .cache import ResponseCache, cache_key
from .client import BudgetExhausted, LLMClient
from .config import InterpretConfig
from .corpus import TokenTable
from .job import Job, failed_requests
from .prompts import COMSEM_EXPLAIN, COMSEM_JUDGE, EXPLAIN, JUDGE, parse_explanation
from .results import write_results
from .sampling import RUN_LEVEL, choose_features, rng_for
from .units import UnitStore

log = logging.getLogger(__name__)

_PLACEHOLDER = "a short phrase of about ten words describing what the feature detects"


def _mode(cfg: InterpretConfig):
    return comsem if cfg.mode == "comsem" else detection


def _templates(cfg: InterpretConfig) -> list[str]:
    pair = (COMSEM_EXPLAIN, COMSEM_JUDGE) if cfg.mode == "comsem" else (EXPLAIN, JUDGE)
    return [t.version for t in pair]


def _explain_template(cfg: InterpretConfig):
    return COMSEM_EXPLAIN if cfg.mode == "comsem" else EXPLAIN


def _fingerprint(cfg: InterpretConfig, coder_id: str, store: ActivationStore, identity, layer: int) -> str:
    """Everything a unit's result depends on (not thresholds, budgets, controls or concurrency)."""
    relevant = {k: v for k, v in cfg.to_dict().items() if k in {
        "mode", "seed", "min_positives", "n_explain", "n_explain_negatives", "n_test_positives", "n_test_negatives",
        "per_token_cap", "per_document_cap", "left_context", "right_context", "comsem_top_k", "comsem_sae_score"}}
    payload = {"config": relevant, "coder": coder_id, "layer": layer, "llm": list(identity),
               "templates": _templates(cfg), "store": {"settings": store.manifest.get("settings"),
                                                      "n_tokens": store.n_tokens}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(cfg: InterpretConfig, backend: Backend | None = None, echo: Callable[[str], None] = log.info) -> Job:
    """Load the coder and store, encode every token, choose features, open the cache and the unit store."""
    from ..coders.registry import find_checkpoint, load

    check_out_dir(cfg.out)
    store = ActivationStore(cfg.store)
    layer = store.default_layer(cfg.layer)
    coder = load(cfg.coder).to(resolve_device(cfg.device))
    d_in = getattr(coder, "d_in", None)
    if d_in is not None and int(d_in) != store.dim:
        raise BitlensError(f"coder {cfg.coder} reads vectors of size {d_in}, store {cfg.store} holds size {store.dim}")
    coder_id = file_fingerprint(find_checkpoint(cfg.coder) / "model.safetensors")
    table = TokenTable(store)
    echo(f"encoding {store.n_tokens} tokens with the {getattr(coder, 'architecture', '?')} coder "
         f"(width {coder.width})")
    stats = scan(coder, store, layer, progress=cfg.progress)
    explicit = cfg.feature_list()
    if explicit is not None:
        bad = [f for f in explicit if not 0 <= f < stats.width]
        if bad:
            raise BitlensError(f"feature indices out of range 0..{stats.width - 1}: {bad[:5]}")
        features = sorted(set(explicit))
    else:
        minority = np.minimum(stats.rate, 1 - stats.rate) * stats.n_tokens
        features = choose_features(stats.rate, cfg.n_features, cfg.seed, eligible=minority >= cfg.min_positives - 1e-6)
    if not features:
        raise BitlensError("the coder has no feature that is neither dead nor always on")
    acts, topk = activations(coder, store, layer, features, stats,
                             comsem_top_k=cfg.comsem_top_k if cfg.mode == "comsem" else 0,
                             sae_score=cfg.comsem_sae_score, progress=cfg.progress)
    if backend is None:
        backend = make_backend(cfg.llm, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                               concurrency=cfg.concurrency, timeout=cfg.timeout, retries=cfg.retries,
                               local_dtype=cfg.local_dtype, reasoning=cfg.reasoning, device=cfg.device)
    out = Path(cfg.out)
    cache = ResponseCache(cfg.cache or out / "cache.sqlite")
    client = LLMClient(backend, cache, max_calls=cfg.max_calls, max_cost=cfg.max_cost,
                       price_input=cfg.price_input, price_output=cfg.price_output)
    llm = (*backend.identity, backend.endpoint) if backend.endpoint else backend.identity
    fingerprint = _fingerprint(cfg, coder_id, store, llm, layer)
    inputs = {"coder": str(cfg.coder), "coder_sha256": coder_id, "architecture": getattr(coder, "architecture", ""),
              "store": str(cfg.store), "store_settings": store.manifest.get("settings"), "layer": layer,
              "llm": list(llm), "templates": _templates(cfg), "unit_fingerprint": fingerprint}
    return Job(cfg, table, stats, acts, {f: i for i, f in enumerate(features)}, topk, client,
               UnitStore(out / "units.sqlite"), fingerprint, features, inputs)


def _request_failed(record: dict, errors: list[str], n: int) -> None:
    record.update(status="request_failed", error=errors[0], failed_requests=len(errors), requests=n)


async def _feature(job: Job, mode, f: int, state: dict) -> None:
    record, examples = mode.sample_feature(job, f)
    state["records"][f], state["examples"][f] = record, examples
    if record["status"] != "ok":
        return
    record["status"] = "unfinished"  # "ok" only once the score is in, so a stopped run never shows ok without it
    exp = await mode.explain(job, f, examples)
    if failed_requests(exp):
        return _request_failed(record, failed_requests(exp), 1)
    record["explanation"], record["explain_raw"] = exp["explanation"], exp["raw"]
    # small models often return a worked example's answer verbatim: flag it (it is still scored, not dropped)
    shots = {a.strip().lower() for _, a in _explain_template(job.cfg).shots}
    record["copies_worked_example"] = bool(exp["explanation"] and exp["explanation"].strip().lower() in shots)
    if exp["explanation"] is None:
        record["status"], record["error"] = "explain_failed", exp["error"] or "unparseable explanation"
        return
    judged = await mode.judge_items(job, f, "score", exp["explanation"], mode.test_items(examples, job.cfg.seed, f))
    if failed_requests(judged):
        return _request_failed(record, failed_requests(judged), len(judged))
    state["judgements"][(f, "score")] = judged
    record["score"] = mode.metrics(judged, record["prevalence"])
    record["status"] = "ok"


def control_pairs(scored: list[int], fraction: float, seed: int) -> list[tuple[int, int]]:
    """(feature, donor) pairs: a seeded ``fraction`` of the scored features, each judged with the explanation of
    another scored feature (a seeded derangement)."""
    if fraction <= 0 or len(scored) < 2:
        return []
    rng = rng_for(seed, RUN_LEVEL, "controls")
    n = min(len(scored), max(1, round(fraction * len(scored))))
    chosen = sorted(int(f) for f in rng.choice(scored, size=n, replace=False))
    ring = [int(f) for f in rng.permutation(scored)]
    nxt = {ring[i]: ring[(i + 1) % len(ring)] for i in range(len(ring))}
    return [(f, nxt[f]) for f in chosen]


async def _controls(job: Job, mode, state: dict, progress: bool) -> None:
    records = state["records"]
    scored = [f for f in job.features if records.get(f, {}).get("score")]
    for f, donor in tqdm(control_pairs(scored, job.cfg.control_fraction, job.cfg.seed), desc="controls",
                         disable=not progress, leave=False):
        items = mode.test_items(state["examples"][f], job.cfg.seed, f)
        judged = await mode.judge_items(job, f, "control", records[donor]["explanation"], items)
        if failed_requests(judged):
            state["failed_controls"].append(failed_requests(judged)[0])
            continue
        state["judgements"][(f, "control")] = judged
        records[f]["control"] = {"kind": "shuffled_explanation", "donor": donor,
                                 "explanation": records[donor]["explanation"],
                                 **mode.metrics(judged, records[f]["prevalence"])}


async def _run_all(job: Job, mode, state: dict) -> None:
    cfg = job.cfg
    features = job.features
    parallel = 1 if job.client.backend.kind == "local" else cfg.concurrency
    gate = asyncio.Semaphore(parallel)
    bar = tqdm(total=len(features), desc="features", disable=not cfg.progress)

    async def one(f: int) -> None:
        async with gate:
            await _feature(job, mode, f, state)
            bar.update(1)

    try:
        async with asyncio.TaskGroup() as group:
            for f in features:
                group.create_task(one(f))
        await _controls(job, mode, state, cfg.progress)
    finally:
        bar.close()
        await job.client.backend.aclose()


def dry_run(job: Job, echo: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Calls and prompt tokens the run would need, counting only requests not in the cache. Judge prompts use
    the cached explanation when there is one, else a placeholder of typical length."""
    mode = _mode(job.cfg)
    explain_t, judge_t = (COMSEM_EXPLAIN, COMSEM_JUDGE) if job.cfg.mode == "comsem" else (EXPLAIN, JUDGE)
    client, backend = job.client, job.client.backend
    statuses: dict[str, int] = {}
    planned: list = []  # (request, template, stage)
    explanations, items = {}, {}
    for f in job.features:
        record, examples = mode.sample_feature(job, f)
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
        if record["status"] != "ok":
            continue
        request = mode.explain_prompt(examples)
        hit = client.cache.get(cache_key(backend.identity, request, explain_t.version, backend.endpoint))
        explanations[f] = (parse_explanation(hit.text) if hit else None) or _PLACEHOLDER
        items[f] = mode.test_items(examples, job.cfg.seed, f)
        planned.append((request, explain_t, "explain"))
        planned += [(mode.judge_prompt(explanations[f], it), judge_t, "score") for it in items[f]]
    for f, donor in control_pairs(sorted(explanations), job.cfg.control_fraction, job.cfg.seed):
        planned += [(mode.judge_prompt(explanations[donor], it), judge_t, "control") for it in items[f]]
    calls: dict[str, int] = {}
    tokens = cached = 0
    for request, template, stage in planned:
        if client.cache.get(cache_key(backend.identity, request, template.version, backend.endpoint)) is not None:
            cached += 1
        else:
            calls[stage] = calls.get(stage, 0) + 1
            tokens += backend.prompt_tokens(request)
    cost = tokens * job.cfg.price_input / 1e6
    report = {"features": len(job.features), "statuses": statuses, "calls": sum(calls.values()),
              "calls_by_stage": calls, "cached": cached, "prompt_tokens": tokens, "estimated_input_cost": cost}
    echo(f"dry run: {report['calls']} calls {calls}, {cached} already cached, {tokens} prompt tokens, "
         f"estimated input cost ${cost:.4f} (judge prompts use a placeholder where no explanation is cached); "
         f"statuses {statuses}")
    return report


def _failure_line(job: Job, state: dict) -> str:
    """One line when LLM requests failed: how many features went unscored (and controls unjudged), and why."""
    failed = [r for r in state["records"].values() if r["status"] == "request_failed"]
    errors = [r["error"] for r in failed] + state["failed_controls"]
    if not errors:
        return ""
    reasons = Counter(e.split(":")[0].strip() for e in errors).most_common(3)
    what = f"{len(failed)} of {len(job.features)} chosen features were not scored"
    if state["failed_controls"]:
        what += f" and {len(state['failed_controls'])} controls not judged"
    return (f"{what}: LLM requests failed ({', '.join(f'{r} x{n}' for r, n in reasons)}; first: {errors[0]}); "
            "nothing failed was recorded as done: rerun the same command to retry")


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def run_interpret(cfg: InterpretConfig, backend: Backend | None = None,
                  echo: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run (or resume) an interpretation into ``cfg.out``; returns the summary (or the dry-run report)."""
    started = time.perf_counter()
    job = prepare(cfg, backend, echo)
    if cfg.dry_run:
        return dry_run(job, echo)
    out = Path(cfg.out)
    write_manifest(out, command="interpret", config=cfg.to_dict(), seeds={"seed": cfg.seed},
                   inputs=job.inputs)
    resumed = job.units.count(job.fingerprint)
    if resumed:
        echo(f"resuming: {resumed} finished work units in {out / 'units.sqlite'}")
    mode = _mode(cfg)
    state: dict[str, Any] = {"records": {}, "examples": {}, "judgements": {}, "failed_controls": []}
    stopped, fatal = None, None
    try:
        asyncio.run(_run_all(job, mode, state))
    except* BudgetExhausted as group:
        stopped = str(_leaf(group))
    except* BackendFatal as group:
        fatal = _leaf(group)
        stopped = str(fatal)
    summary = write_results(out, cfg, job, mode, state, stopped=stopped, elapsed=time.perf_counter() - started)
    job.units.close()
    job.client.cache.close()
    if fatal is not None:
        raise BitlensError(f"stopped: {fatal} (finished units are kept; rerun to continue)")
    failure = _failure_line(job, state)
    if failure:
        raise BitlensError(failure)
    if stopped:
        echo(f"stopped cleanly: {stopped}; rerun the same command to continue")
    return summary
