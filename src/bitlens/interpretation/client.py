"""The pipeline's LLM client: response cache in front of a backend, call and cost budgets, counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..io import BitlensError
from .backends.base import Backend, ChatRequest, Reply
from .cache import ResponseCache, cache_key


class BudgetExhausted(BitlensError):
    """--max-calls or --max-cost reached: the run stops cleanly after its finished work units."""


@dataclass
class Usage:
    calls: int = 0  # requests that reached the backend
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    by_stage: dict[str, int] = field(default_factory=dict)


class LLMClient:
    def __init__(self, backend: Backend, cache: ResponseCache, *, max_calls: int = 0, max_cost: float = 0.0,
                 price_input: float = 0.0, price_output: float = 0.0):
        self.backend = backend
        self.cache = cache
        self.max_calls = max_calls
        self.max_cost = max_cost
        self.price_input = price_input
        self.price_output = price_output
        self.usage = Usage()

    async def ask(self, requests: list[ChatRequest], template: str, stage: str = "") -> list[tuple[str, Reply]]:
        """(cache key, reply) per request; cached replies cost nothing. Raises BudgetExhausted before sending a
        batch that the call or cost budget cannot cover, so no unit is left half-paid."""
        keys = [cache_key(self.backend.identity, r, template, self.backend.endpoint) for r in requests]
        replies: list[Reply | None] = [self.cache.get(k) for k in keys]
        missing = [i for i, r in enumerate(replies) if r is None]
        self.usage.cache_hits += len(requests) - len(missing)
        if missing:
            if self.max_calls and self.usage.calls + len(missing) > self.max_calls:
                raise BudgetExhausted(f"the call budget ({self.max_calls}) is reached ({self.usage.calls} calls made)")
            if self.max_cost and self.usage.cost >= self.max_cost:
                raise BudgetExhausted(f"the cost budget (${self.max_cost}) is reached (${self.usage.cost:.4f} spent)")
            def arrived(j: int, reply: Reply) -> None:
                i = missing[j]
                replies[i] = reply
                self.usage.calls += 1
                self.usage.by_stage[stage] = self.usage.by_stage.get(stage, 0) + 1
                self.usage.prompt_tokens += reply.prompt_tokens
                self.usage.completion_tokens += reply.completion_tokens
                self.usage.latency_s += reply.latency_s
                self.usage.errors += bool(reply.error)
                self.usage.cost += (reply.prompt_tokens * self.price_input
                                    + reply.completion_tokens * self.price_output) / 1e6
                self.cache.put_many([(keys[i], self.backend.identity, template, reply)])  # paid for: keep it

            await self.backend.complete_many([requests[i] for i in missing], on_reply=arrived)
        return list(zip(keys, replies))  # type: ignore[arg-type]
