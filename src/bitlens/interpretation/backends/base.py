"""One small asynchronous interface for every LLM backend."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from ...io import BitlensError


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion at temperature 0. ``choices`` marks a closed question (e.g. ("Yes", "No")): backends
    that can score the answers directly (local models) do so; others generate and the caller parses the text."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    max_tokens: int = 32
    choices: tuple[str, ...] = ()

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass
class Reply:
    """A backend's answer. ``error`` set means the request failed (transport error after retries, malformed reply):
    no usable answer, never cached, and the work unit that asked it is not committed, so a rerun asks again."""

    text: str = ""
    p_choice: dict[str, float] = field(default_factory=dict)  # probability per choice, when the backend has it
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class BackendFatal(BitlensError):
    """Stops the run: authentication failure, an open circuit breaker, a replay miss."""


class Backend:
    """``identity`` (kind, model) goes into cache keys. Subclasses implement ``complete``; ``complete_many``
    runs requests with bounded concurrency (local backends override it to batch)."""

    kind = "base"
    endpoint = ""  # the server's URL for HTTP backends: part of the cache key, so servers never share replies

    def __init__(self, model: str, concurrency: int = 8):
        self.model = model
        self.concurrency = concurrency

    @property
    def identity(self) -> tuple[str, str]:
        return (self.kind, self.model)

    async def complete(self, request: ChatRequest) -> Reply:
        raise NotImplementedError

    def _gate(self) -> asyncio.Semaphore:
        """One semaphore per backend and event loop: at most ``concurrency`` requests in flight in all, however
        many features run at once."""
        loop = asyncio.get_running_loop()
        if getattr(self, "_gate_loop", None) is not loop:
            self._gate_loop, self._semaphore = loop, asyncio.Semaphore(self.concurrency)
        return self._semaphore

    async def complete_many(self, requests: list[ChatRequest],
                            on_reply: Callable[[int, Reply], None] | None = None) -> list[Reply]:
        """Replies in request order; ``on_reply(i, reply)`` runs as each one arrives, so the caller can cache it
        before a later request fails."""
        gate = self._gate()
        replies: list[Reply | None] = [None] * len(requests)

        async def one(i: int, r: ChatRequest) -> None:
            async with gate:
                replies[i] = await self.complete(r)
            if on_reply is not None:
                on_reply(i, replies[i])

        async with asyncio.TaskGroup() as group:  # the first failure cancels the requests still waiting
            for i, r in enumerate(requests):
                group.create_task(one(i, r))
        return replies  # type: ignore[return-value]

    def count_tokens(self, text: str) -> int:
        """Prompt-token estimate for dry runs (about 4 characters per token unless the backend knows better)."""
        return max(1, len(text) // 4)

    def prompt_tokens(self, request: ChatRequest) -> int:
        return self.count_tokens("".join(content for _, content in request.messages))

    async def aclose(self) -> None:
        return None
