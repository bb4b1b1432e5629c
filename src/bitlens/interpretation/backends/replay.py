"""``replay:SPEC``: answers only from the response cache (keyed as SPEC would be) and fails on a miss."""

from __future__ import annotations

from .base import Backend, BackendFatal, ChatRequest, Reply


class ReplayBackend(Backend):
    kind = "replay"

    def __init__(self, inner_identity: tuple[str, str], endpoint: str = ""):
        super().__init__(inner_identity[1])
        self._identity = inner_identity
        self.endpoint = endpoint  # the replayed server's, so its cache keys match

    @property
    def identity(self) -> tuple[str, str]:
        return self._identity  # cache entries written by the replayed backend match

    async def complete(self, request: ChatRequest) -> Reply:
        raise BackendFatal(f"replay: no cached reply for a request to {self._identity[0]}:{self._identity[1]} "
                           "(run once with the real backend to fill the cache)")
