"""OpenAI-compatible chat completions through the ``openai`` SDK (OpenAI, vLLM, llama.cpp server, Ollama, ...).

The SDK's own retries are off: this module retries 429, 5xx, timeouts, connection errors and malformed replies
with exponential backoff and jitter, honouring ``Retry-After``; a circuit breaker stops the run after too many
consecutive failed requests. The key comes from an environment variable and is never logged or cached.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from .base import Backend, BackendFatal, ChatRequest, Reply

_FATAL_STATUS = {401, 403, 404}  # wrong key or model: every further request would fail the same way


class OpenAIBackend(Backend):
    kind = "openai"

    def __init__(self, model: str, *, base_url: str = "", api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 60.0, retries: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, breaker_threshold: int = 5, reasoning: bool = False):
        super().__init__(model, concurrency)
        import openai

        key = os.environ.get(api_key_env, "")
        if not key and not base_url:
            raise BackendFatal(f"set the API key in the environment variable {api_key_env} "
                               "(or name a local server's base URL)")
        self._openai = openai
        # local servers usually accept any key; the SDK refuses an empty one
        self.client = openai.AsyncOpenAI(api_key=key or "not-needed", base_url=base_url or None,
                                         timeout=timeout, max_retries=0)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.breaker_threshold = breaker_threshold
        # reasoning models reject temperature and max_tokens, and bill hidden reasoning tokens as completion tokens
        self.reasoning = reasoning
        self.consecutive_failures = 0
        self.attempts = 0  # HTTP requests sent, retries included

    @property
    def identity(self) -> tuple[str, str]:
        return (self.kind, self.model + ("@reasoning" if self.reasoning else ""))  # other parameters, other key

    async def complete(self, request: ChatRequest) -> Reply:
        if self.consecutive_failures >= self.breaker_threshold:
            raise BackendFatal(f"circuit breaker open: {self.consecutive_failures} consecutive failed requests "
                               f"to {self.model}")
        started = time.perf_counter()
        last_error = ""
        for attempt in range(self.retries + 1):
            self.attempts += 1
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
            except self._openai.APIStatusError as exc:
                status = exc.status_code
                if status in _FATAL_STATUS:
                    raise BackendFatal(f"{self.model}: HTTP {status} from the server "
                                       f"({_short(exc)}); check the model name, base URL and key") from None
                last_error = f"HTTP {status}: {_short(exc)}"
                if status != 429 and status < 500:
                    break  # a bad request stays bad
                wait = _retry_after(exc.response) if status == 429 else None
            except (self._openai.APITimeoutError, self._openai.APIConnectionError) as exc:
                last_error = type(exc).__name__
                wait = None
            except (self._openai.APIResponseValidationError, ValueError, IndexError, AttributeError) as exc:
                last_error = f"malformed reply: {_short(exc)}"  # json.JSONDecodeError is a ValueError
                wait = None
            if attempt < self.retries:
                delay = wait if wait is not None else min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
                await asyncio.sleep(delay * (1.0 if wait is not None else random.uniform(0.5, 1.0)))
        self.consecutive_failures += 1
        return Reply(error=last_error or "failed", latency_s=time.perf_counter() - started)

    async def aclose(self) -> None:
        await self.client.close()


def _retry_after(response) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header, capped at 5 minutes."""
    headers = getattr(response, "headers", {}) or {}
    try:
        if "retry-after-ms" in headers:
            return min(300.0, float(headers["retry-after-ms"]) / 1000)
        if "retry-after" in headers:
            return min(300.0, float(headers["retry-after"]))
    except ValueError:
        return None
    return None


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
