"""OpenAI-compatible chat completions through the ``openai`` SDK (OpenAI, vLLM, llama.cpp server, Ollama, ...).

Transport retries are the SDK's own (``max_retries``): 408/409/429/5xx, timeouts and connection errors, with
exponential backoff and jitter, honouring ``Retry-After``. This module adds only what the SDK lacks: retrying a
reply that arrived but is malformed, and a circuit breaker that stops the run after too many consecutive failed
requests. The key comes from an environment variable; it is registered for redaction, so neither it nor any
``Bearer ...`` token a server echoes back reaches a message, log, file or cache.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from ...redact import redact, register_secret
from .base import Backend, BackendFatal, ChatRequest, Reply

_FATAL_STATUS = {401, 403, 404}  # wrong key or model: every further request would fail the same way
DEFAULT_BASE_URL = "https://api.openai.com/v1"


def endpoint_for(base_url: str = "") -> str:
    """The server a backend talks to, as the SDK resolves it (argument, else OPENAI_BASE_URL, else OpenAI's)."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


class OpenAIBackend(Backend):
    kind = "openai"

    def __init__(self, model: str, *, base_url: str = "", api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 60.0, retries: int = 5, backoff_s: float = 0.5,
                 breaker_threshold: int = 5, reasoning: bool = False):
        super().__init__(model, concurrency)
        import openai

        key = os.environ.get(api_key_env, "")
        if not key and not base_url:
            raise BackendFatal(f"set the API key in the environment variable {api_key_env} "
                               "(or name a local server's base URL)")
        register_secret(key)
        self._openai = openai
        self.endpoint = endpoint_for(base_url)  # part of every cache key: two servers never share replies
        # local servers usually accept any key; the SDK refuses an empty one
        self.client = openai.AsyncOpenAI(api_key=key or "not-needed", base_url=base_url or None,
                                         timeout=timeout, max_retries=retries)
        self.retries = retries  # also the number of re-asks after a malformed reply
        self.backoff_s = backoff_s  # pause before re-asking after a malformed reply
        self.breaker_threshold = breaker_threshold
        # reasoning models reject temperature and max_tokens, and bill hidden reasoning tokens as completion tokens
        self.reasoning = reasoning
        self.consecutive_failures = 0

    @property
    def identity(self) -> tuple[str, str]:
        return (self.kind, self.model + ("@reasoning" if self.reasoning else ""))  # other parameters, other key

    async def complete(self, request: ChatRequest) -> Reply:
        if self.consecutive_failures >= self.breaker_threshold:
            raise BackendFatal(f"circuit breaker open: {self.consecutive_failures} consecutive failed requests "
                               f"to {self.model}")
        started = time.perf_counter()
        error = ""
        for attempt in range(self.retries + 1):
            try:
                params = ({"max_completion_tokens": max(request.max_tokens, 1024)} if self.reasoning
                          else {"temperature": 0.0, "max_tokens": request.max_tokens})
                response = await self.client.chat.completions.create(
                    model=self.model, messages=request.as_messages(), **params)
                text = response.choices[0].message.content
                if text is None:
                    raise ValueError("reply without message content")
                usage = response.usage
                self.consecutive_failures = 0
                return Reply(text=text, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                             completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                             latency_s=time.perf_counter() - started,
                             extra={"fingerprint": getattr(response, "system_fingerprint", None),
                                    "reasoning_tokens": getattr(getattr(usage, "completion_tokens_details", None),
                                                                "reasoning_tokens", None)})
            except self._openai.APIStatusError as exc:  # the SDK has already retried 429 and 5xx
                if exc.status_code in _FATAL_STATUS:
                    raise BackendFatal(f"{self.model}: HTTP {exc.status_code} from the server "
                                       f"({_short(exc)}); check the model name, base URL and key") from None
                error = f"HTTP {exc.status_code}: {_short(exc)}"
                break
            except (self._openai.APITimeoutError, self._openai.APIConnectionError) as exc:  # retried by the SDK
                error = f"{type(exc).__name__}: {_short(exc)}"
                break
            except (self._openai.APIResponseValidationError, ValueError, IndexError, AttributeError) as exc:
                error = f"malformed reply: {_short(exc)}"  # json.JSONDecodeError is a ValueError
                if attempt < self.retries:
                    await asyncio.sleep(self.backoff_s * random.uniform(0.5, 1.0))
        self.consecutive_failures += 1
        return Reply(error=error or "failed", latency_s=time.perf_counter() - started)

    async def aclose(self) -> None:
        await self.client.close()


def _short(exc: BaseException) -> str:
    return redact((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]  # mask, then cut
