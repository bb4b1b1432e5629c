"""What every per-feature procedure needs: tokens, activations, the LLM client, the unit store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .activations import CoderScan
from .backends.base import ChatRequest
from .client import LLMClient
from .config import InterpretConfig
from .corpus import TokenTable
from .lexical import best_token_set
from .prompts import Template, parse_choice, parse_explanation
from .sampling import rate_bin
from .units import UnitStore


def failed_requests(result: Any) -> list[str]:
    """Errors of the failed requests in a unit's result (an explanation dict or a list of judgements)."""
    rows = result if isinstance(result, list) else [result]
    return [r["error"] for r in rows if isinstance(r, dict) and r.get("error")]


@dataclass
class Job:
    cfg: InterpretConfig
    table: TokenTable
    scan: CoderScan
    acts: np.ndarray  # [n_tokens, n_chosen] activations of the chosen features
    column: dict[int, int]  # feature -> column of acts
    topk: np.ndarray | None  # [n_tokens, k] ComSem assignments
    client: LLMClient
    units: UnitStore
    fingerprint: str
    features: list[int]  # the chosen features, in order
    inputs: dict[str, Any]  # provenance for the manifest and summary

    def state(self, feature: int) -> tuple[np.ndarray, str, float]:
        """Minority-state mask [n], polarity ('on' or 'off') and the minority state's corpus rate."""
        fires = self.acts[:, self.column[feature]] > 0
        p = float(self.scan.rate[feature])
        if p > 0.5:
            return ~fires, "off", 1.0 - p
        return fires, "on", p

    def base_record(self, feature: int) -> dict[str, Any]:
        state, polarity, prevalence = self.state(feature)
        p = float(self.scan.rate[feature])
        return {"feature": feature, "firing_rate": p, "rate_bin": rate_bin(p), "polarity": polarity,
                "prevalence": prevalence, "n_minority": int(state.sum()),
                "lexical": best_token_set(self.table.token, state, self.table.texts)}

    async def unit(self, feature: int, stage: str, compute) -> Any:
        """The committed result of (feature, stage), computing and committing it first if needed. A result in
        which a request failed (transport error after retries, malformed reply) is returned but not committed:
        it is not done work, and a rerun asks again (the replies that did arrive are cached)."""
        done = self.units.get(feature, stage, self.fingerprint)
        if done is not None:
            return done
        result = await compute()
        if not failed_requests(result):
            self.units.put(feature, stage, self.fingerprint, result)
        return result

    async def judge(self, requests: list[ChatRequest], template: Template, stage: str) -> list[dict[str, Any]]:
        """One judgement per request: raw text, parsed answer (None = missing), P(yes) when known, cache key."""
        out = []
        for key, reply in await self.client.ask(requests, template.version, stage):
            parsed = None if reply.error else parse_choice(reply.text)
            out.append({"raw": reply.text, "error": reply.error, "answer": None if parsed is None else parsed == "Yes",
                        "p_yes": reply.p_choice.get("Yes"), "cache_key": key})
        return out

    async def explain_unit(self, feature: int, request: ChatRequest, template: Template) -> dict[str, Any]:
        """The committed explanation of ``feature``: one LLM call, parsed (None when the reply failed)."""
        async def compute():
            (key, reply), = await self.client.ask([request], template.version, "explain")
            return {"explanation": None if reply.error else parse_explanation(reply.text), "raw": reply.text,
                    "error": reply.error, "cache_key": key}
        return await self.unit(feature, "explain", compute)

    async def judge_unit(self, feature: int, stage: str, requests: list[ChatRequest], template: Template,
                         items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The committed judgements of one (feature, stage): one per item, with the item's row, label, sampler."""
        async def compute():
            answers = await self.judge(requests, template, stage)
            return [{"row": it["row"], "label": it["label"], "sampler": it["sampler"], **a}
                    for a, it in zip(answers, items)]
        return await self.unit(feature, stage, compute)
