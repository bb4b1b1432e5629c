"""ComSem, faithful mode (paper section 5.1 as the official code runs it).

Every token is assigned to its top-k features by selection score (BAE: burstiness log2|h - mean h|; other
coders: activation or z-score), lists kept in corpus order. A feature with at least 6 assigned tokens is
explained from the first 5 (token, position, sentence) and tested on up to the next 8 with one yes/no judgement
each; its score is the fraction judged yes. Deviations, on purpose: answers are parsed leniently ("Yes." is a
yes) and an unparseable answer is missing rather than "no"; temperature is 0 and every reply is cached."""

from __future__ import annotations

from typing import Any

import numpy as np

from .display import clean, show_token
from .job import Job
from .prompts import COMSEM_EXPLAIN, COMSEM_JUDGE, comsem_explain_request, comsem_item, comsem_judge_request
from .scoring import recall_metrics

MIN_SAMPLES, N_EXPLAIN, N_TEST = 6, 5, 8


def _item(job: Job, row: int) -> str:
    before, target, after = job.table.sentence_of(row)
    sentence = clean("".join(before)) + "⟦" + show_token(target) + "⟧" + clean("".join(after))
    return comsem_item(show_token(target), int(job.table.position[row]), sentence)


def sample_feature(job: Job, feature: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    record = job.base_record(feature)
    assert job.topk is not None
    rows = np.flatnonzero((job.topk == feature).any(axis=1))  # corpus (store) order, as in the official code
    record["n_assigned"] = int(len(rows))
    if len(rows) < MIN_SAMPLES:
        return {**record, "status": "too_few_examples"}, []
    examples = []
    for i, r in enumerate(rows[:N_EXPLAIN + N_TEST]):
        examples.append({"feature": feature, "split": "explain" if i < N_EXPLAIN else "test", "sampler": "comsem",
                         "row": int(r), "label": 1, "document": job.table.document_id(int(r)),
                         "token": job.table.text(int(r)), "context": _item(job, int(r))})
    return {**record, "status": "ok"}, examples


def test_items(examples: list[dict[str, Any]], seed: int, feature: int) -> list[dict[str, Any]]:
    return [e for e in examples if e["split"] == "test"]


def explain_prompt(examples: list[dict[str, Any]]):
    return comsem_explain_request([e["context"] for e in examples if e["split"] == "explain"])


async def explain(job: Job, feature: int, examples: list[dict[str, Any]]) -> dict[str, Any]:
    return await job.explain_unit(feature, explain_prompt(examples), COMSEM_EXPLAIN)


def judge_prompt(explanation: str, item: dict[str, Any]):
    return comsem_judge_request(explanation, item["context"])


async def judge_items(job: Job, feature: int, stage: str, explanation: str,
                      items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return await job.judge_unit(feature, stage, [judge_prompt(explanation, it) for it in items], COMSEM_JUDGE, items)


def metrics(judgements: list[dict[str, Any]], prevalence: float) -> dict[str, Any]:
    return recall_metrics([j["answer"] for j in judgements])


def interpretable(score: dict[str, Any], threshold: float) -> bool:
    """Paper-style: the raw score at the threshold (the lower-bound count is reported beside it)."""
    return bool(score.get("n_pos")) and score["score"] >= threshold


def headline(score: dict[str, Any]) -> float:
    return float(score.get("score", np.nan))
