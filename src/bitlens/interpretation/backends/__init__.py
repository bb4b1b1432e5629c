"""LLM backends behind one async interface; ``make_backend`` parses ``--llm`` specs."""

from __future__ import annotations

from ...io import BitlensError
from .base import Backend, BackendFatal, ChatRequest, Reply

__all__ = ["Backend", "BackendFatal", "ChatRequest", "Reply", "make_backend", "parse_spec"]

KINDS = ("local", "openai", "replay")


def parse_spec(spec: str) -> tuple[str, str]:
    """'openai:gpt-4.1-mini' -> ('openai', 'gpt-4.1-mini'); 'replay:local:embedded' -> ('replay', 'local:embedded')."""
    kind, sep, model = spec.partition(":")
    if kind not in KINDS or not sep or not model:
        raise BitlensError(f"the LLM must be local:MODEL, openai:MODEL or replay:SPEC, not {spec!r}")
    return kind, model


def make_backend(spec: str, *, base_url: str = "", api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 60.0, retries: int = 5, local_dtype: str = "float32",
                 reasoning: bool = False, device: str = "cpu") -> Backend:
    """Build the backend named by ``spec``; heavy dependencies are imported only for the kind chosen."""
    kind, model = parse_spec(spec)
    if kind == "replay":
        inner_kind, sep, inner_model = model.partition(":")
        if inner_kind == "replay" or not sep or not inner_model:
            raise BitlensError(f"replay needs the backend it replays, e.g. replay:openai:MODEL, not {spec!r}")
        from .replay import ReplayBackend

        endpoint = ""
        if inner_kind == "openai":
            from .openai_http import endpoint_for

            endpoint = endpoint_for(base_url)
        return ReplayBackend((inner_kind, inner_model), endpoint)
    if kind == "openai":
        from .openai_http import OpenAIBackend

        return OpenAIBackend(model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                             timeout=timeout, retries=retries, reasoning=reasoning)
    from .local_transformers import LocalBackend

    return LocalBackend(model, concurrency=max(concurrency, 1), dtype=local_dtype, device=device)
