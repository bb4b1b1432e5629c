"""Default mode: balanced detection for binary features.

Explain from diverse minority-state examples (capped per token and per document) plus same-token non-firing
examples, on one side of a document split; judge held-out positives and negatives (random majority-state tokens
and token-matched ones) from the other side, one yes/no per token in context."""

from __future__ import annotations

from typing import Any

import numpy as np

from .display import enclosing_word, mark_context
from .job import Job
from .prompts import EXPLAIN, JUDGE, explain_request, judge_request
from .sampling import detection_sample, rng_for
from .scoring import detection_metrics


def _item(job: Job, row: int) -> str:
    before, target, after = job.table.context(row, job.cfg.left_context, job.cfg.right_context)
    text = mark_context(before, target, after)
    word = enclosing_word(before, target, after)
    return f"{text} (the marked token is part of {word!r})" if word else text


def _examples(job: Job, feature: int, rows, split: str, sampler: str, label: int) -> list[dict[str, Any]]:
    return [{"feature": feature, "split": split, "sampler": sampler, "row": int(r), "label": label,
             "document": job.table.document_id(int(r)), "token": job.table.text(int(r)), "context": _item(job, int(r))}
            for r in rows]


def sample_feature(job: Job, feature: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The feature's record so far (status, lexical baseline) and its examples (empty unless status ok)."""
    cfg = job.cfg
    record = job.base_record(feature)
    if record["n_minority"] < cfg.min_positives:
        return {**record, "status": "too_few_examples"}, []
    state, _, _ = job.state(feature)
    t = job.table
    s = detection_sample(state, t.doc, t.chunk, t.token, seed=cfg.seed, feature=feature, n_explain=cfg.n_explain,
                         n_explain_neg=cfg.n_explain_negatives, n_test_pos=cfg.n_test_positives,
                         n_test_neg=cfg.n_test_negatives, per_token=cfg.per_token_cap, per_doc=cfg.per_document_cap)
    if s is None:
        return {**record, "status": "too_few_examples", "reason": "all examples in one model input"}, []
    examples = (_examples(job, feature, s.explain_pos, "explain", "diverse_on", 1)
                + _examples(job, feature, s.explain_neg, "explain", "neg_token_matched", 0)
                + _examples(job, feature, s.test_pos, "test", "random_on", 1))
    for kind in ("random", "token_matched"):
        rows = [r for r, k in zip(s.test_neg, s.test_neg_kind) if k == kind]
        examples += _examples(job, feature, rows, "test", f"neg_{kind}", 0)
    return {**record, "status": "ok", "split_unit": s.split_unit}, examples


def test_items(examples: list[dict[str, Any]], seed: int, feature: int) -> list[dict[str, Any]]:
    """Held-out items in a seeded shuffled order (so positives and negatives interleave in batches)."""
    items = [e for e in examples if e["split"] == "test"]
    order = rng_for(seed, feature, "test-order").permutation(len(items))
    return [items[i] for i in order]


def explain_prompt(examples: list[dict[str, Any]]):
    pos = [e["context"] for e in examples if e["split"] == "explain" and e["label"] == 1]
    neg = [e["context"] for e in examples if e["split"] == "explain" and e["label"] == 0]
    return explain_request(pos, neg)


async def explain(job: Job, feature: int, examples: list[dict[str, Any]]) -> dict[str, Any]:
    return await job.explain_unit(feature, explain_prompt(examples), EXPLAIN)


def judge_prompt(explanation: str, item: dict[str, Any]):
    return judge_request(explanation, item["context"])


async def judge_items(job: Job, feature: int, stage: str, explanation: str,
                      items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return await job.judge_unit(feature, stage, [judge_prompt(explanation, it) for it in items], JUDGE, items)


def metrics(judgements: list[dict[str, Any]], prevalence: float) -> dict[str, Any]:
    kinds = [j["sampler"].removeprefix("neg_") for j in judgements]
    return detection_metrics([j["label"] for j in judgements], [j["answer"] for j in judgements], kinds, prevalence,
                             [j.get("p_yes") for j in judgements])


def interpretable(score: dict[str, Any], threshold: float) -> bool:
    lo = score.get("balanced_accuracy_ci", (0.0, 1.0))[0]
    return bool(score.get("n_pos") and score.get("n_neg") and lo >= threshold)


def headline(score: dict[str, Any]) -> float:
    return float(score.get("balanced_accuracy", np.nan))
