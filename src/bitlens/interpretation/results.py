"""Run outputs: per-feature table (JSONL, Parquet when pyarrow is installed), examples, judgements, summary
and plots. Written from the committed work units, so a resumed run writes the same files as an uninterrupted one."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..io import _json_default, json_safe, write_json, write_text
from ..redact import redact
from .sampling import RATE_LABELS


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return redact("".join(json.dumps(json_safe(r), default=_json_default, ensure_ascii=False) + "\n" for r in rows))


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> bool:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    flat = [{k: (json.dumps(v, default=_json_default) if isinstance(v, (dict, list)) else v) for k, v in r.items()}
            for r in rows]
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(flat), tmp)
    return True


def summarise(cfg, job, mode, records: list[dict[str, Any]]) -> dict[str, Any]:
    thresholds = cfg.threshold_list()
    scored = [r for r in records if r.get("score")]
    rate = job.scan.rate
    summary: dict[str, Any] = {
        "mode": cfg.mode, "llm": cfg.llm, "n_features": len(records), "n_scored": len(scored),
        "statuses": dict(Counter(r["status"] for r in records)),
        "n_interpretable": {str(t): sum(mode.interpretable(r["score"], t) for r in scored) for t in thresholds},
        "interpretable_rule": ("balanced-accuracy 95% lower bound >= threshold" if cfg.mode == "default"
                               else "fraction yes >= threshold (paper style)"),
        "mean_score": _mean(mode.headline(r["score"]) for r in scored),
        "score_name": "balanced_accuracy" if cfg.mode == "default" else "comsem_fraction_yes",
        "missing_rate": _mean(r["score"]["missing_rate"] for r in scored),
        "n_explanations_copying_worked_example": sum(bool(r.get("copies_worked_example")) for r in records),
        "n_distinct_explanations": len({r["explanation"] for r in records if r.get("explanation")}),
    }
    if cfg.mode == "default":
        for key in ("tpr", "tnr", "tnr_random", "tnr_token_matched", "precision_pop", "f1_pop", "auroc"):
            summary[f"mean_{key}"] = _mean(r["score"][key] for r in scored)
    else:
        summary["n_interpretable_lower_bound"] = {str(t): sum(r["score"]["score_ci"][0] >= t for r in scored)
                                                  for t in thresholds}
    by_bin = {}
    for label in RATE_LABELS:
        rows = [r for r in records if r["rate_bin"] == label]
        if rows:
            s = [r for r in rows if r.get("score")]
            by_bin[label] = {"n": len(rows), "n_scored": len(s), "mean_score": _mean(mode.headline(r["score"]) for r in s),
                             "n_interpretable": {str(t): sum(mode.interpretable(r["score"], t) for r in s)
                                                 for t in thresholds}}
    summary["by_rate_bin"] = by_bin
    ctrl = [r for r in scored if r.get("control")]
    summary["controls"] = {
        "shuffled_explanation": {
            "n": len(ctrl), "mean_score": _mean(mode.headline(r["control"]) for r in ctrl),
            "mean_score_real_explanation": _mean(mode.headline(r["score"]) for r in ctrl),
            "n_interpretable": {str(t): sum(mode.interpretable(r["control"], t) for r in ctrl) for t in thresholds}},
        "lexical": {"n": len(records), "mean_f1": _mean(r["lexical"]["f1"] for r in records),
                    "n_lexical": sum(r["lexical"]["lexical"] for r in records)},
    }
    if ctrl and summary["controls"]["shuffled_explanation"]["mean_score"] is not None:
        summary["controls"]["score_minus_control"] = (summary["controls"]["shuffled_explanation"]["mean_score_real_explanation"]
                                                      - summary["controls"]["shuffled_explanation"]["mean_score"])
    summary["coder"] = {"architecture": job.inputs["architecture"], "binary": job.scan.binary,
                        "width": job.scan.width, "n_tokens": job.scan.n_tokens,
                        "dead": int((rate <= 0).sum()), "always_on": int((rate >= 1).sum()),
                        "dense_over_0.1": int(((rate > 0.1) & (rate < 1)).sum()),
                        "over_0.5": int(((rate > 0.5) & (rate < 1)).sum()),
                        "too_rare": int(((rate > 0) & (rate < 1) & (np.minimum(rate, 1 - rate) * job.scan.n_tokens
                                                                     < cfg.min_positives - 1e-6)).sum())}
    return summary


def write_results(out: Path, cfg, job, mode, state: dict[str, Any], *, stopped: str | None,
                  elapsed: float) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    records = [state["records"][f] for f in job.features if f in state["records"]]
    examples = [e for f in job.features for e in state["examples"].get(f, [])]
    judgements = []
    for (f, stage), rows in sorted(state["judgements"].items()):
        judgements += [{"feature": f, "scorer": stage, "item": i, **row} for i, row in enumerate(rows)]
    write_text(out / "features.jsonl", _jsonl(records))
    write_text(out / "examples.jsonl", _jsonl(examples))
    write_text(out / "judgements.jsonl", _jsonl(judgements))
    parquet = _write_parquet(out / "features.parquet", records)
    summary = summarise(cfg, job, mode, records)
    u = job.client.usage
    summary["usage"] = {"calls": u.calls, "cache_hits": u.cache_hits, "prompt_tokens": u.prompt_tokens,
                        "completion_tokens": u.completion_tokens, "errors": u.errors, "cost": u.cost,
                        "backend_latency_s": u.latency_s, "calls_by_stage": u.by_stage}
    summary["elapsed_s"] = elapsed
    summary["stopped"] = stopped
    summary["complete"] = (stopped is None and len(records) == len(job.features) and not state.get("failed_controls")
                           and not any(r["status"] in ("request_failed", "unfinished") for r in records))
    summary["files"] = ["features.jsonl", "examples.jsonl", "judgements.jsonl", "summary.json"] + \
        (["features.parquet"] if parquet else [])
    from .plots import plot_interpretation

    summary["files"] += plot_interpretation(out, cfg, mode, records)
    write_json(out / "summary.json", summary)
    return summary
