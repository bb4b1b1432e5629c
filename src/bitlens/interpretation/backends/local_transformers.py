"""A local transformers chat model (default: the embedded SmolLM2-135M-Instruct), greedy, on CPU or GPU.

Closed questions (``ChatRequest.choices``, e.g. Yes/No) are answered from the next-token logits right after the
chat template's assistant prefix: the answer is the choice whose first token scores highest, in padded batches,
and the probability over the choices is recorded. Open questions (explanations) are short greedy generations.
Both reuse the key/value cache of the longest token prefix already computed (instructions, worked examples, the
explanation under test), so the static part of a prompt is run once rather than once per item.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import threading
import time
from typing import Any

import torch

from .base import Backend, ChatRequest, Reply


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _PrefixKV:
    """A few key/value caches keyed by their token ids; ``get`` returns a private copy cropped to the longest
    prefix shared with the request."""

    def __init__(self, size: int = 4):
        self.size = size
        self.entries: list[tuple[tuple[int, ...], Any]] = []

    def get(self, ids: list[int]) -> tuple[int, Any]:
        best, cache, length = 0, None, 0
        for key, value in self.entries:
            n = _common_prefix(key, ids)
            if n > best:
                best, cache, length = n, value, len(key)
        if cache is None:
            return 0, None
        cache = copy.deepcopy(cache)
        if length > best:
            cache.crop(best - length)  # a negative count removes that many trailing tokens
        return best, cache

    def put(self, ids: list[int], cache: Any) -> None:
        self.entries = [e for e in self.entries if e[0] != tuple(ids)][-(self.size - 1):]
        self.entries.append((tuple(ids), copy.deepcopy(cache)))


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, model: str = "embedded", *, concurrency: int = 16, device: str = "cpu",
                 dtype: str = "float32", loaded: Any = None):
        super().__init__(model, concurrency)
        if loaded is None:
            from ...data.models import load_model

            loaded = load_model(model, device=device, dtype=dtype)
        self.lm = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = next(self.lm.parameters()).device
        # cache identity: the pinned embedded model by name, any other by its weights' fingerprint
        self.model = (model if model == "embedded" else getattr(loaded, "fingerprint", model)) + \
            ("" if dtype == "float32" else f"@{dtype}")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        eos = self.lm.generation_config.eos_token_id if self.lm.generation_config is not None else None
        eos = eos if isinstance(eos, list) else [eos]
        self.stop_ids = {i for i in [*eos, self.tokenizer.eos_token_id] if i is not None}
        self.prefixes = _PrefixKV()
        # transformers 5.24 renamed the forward's key/value-cache argument (past_key_values -> cache) and will drop
        # the old name in 5.40; pass whichever this version's forward declares
        params = inspect.signature(self.lm.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.forward_tokens = 0
        self._lock = threading.Lock()  # tokens actually run through the model (prefix reuse makes this small)

    # -- prompt rendering

    def render(self, request: ChatRequest) -> list[int]:
        text = self.tokenizer.apply_chat_template(request.as_messages(), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, request: ChatRequest) -> int:
        return len(self.render(request))

    def _choice_ids(self, choice: str) -> list[int]:
        """First tokens of the ways a model may start this answer ("Yes", "yes", " Yes")."""
        ids = set()
        for variant in {choice, choice.lower(), choice.capitalize(), " " + choice}:
            tokens = self.tokenizer(variant, add_special_tokens=False)["input_ids"]
            if tokens:
                ids.add(tokens[0])
        return sorted(ids)

    # -- model calls

    def _mask(self, batch: int, length: int) -> torch.Tensor:
        return torch.ones(batch, length, dtype=torch.long, device=self.device)

    def _prefix_cache(self, ids: list[int]) -> Any:
        """Key/value cache of exactly ``ids`` (a private copy)."""
        from transformers import DynamicCache

        n, cache = self.prefixes.get(ids)
        if cache is None:
            cache = DynamicCache()
        if n < len(ids):
            rest = torch.tensor([ids[n:]], device=self.device)
            self.lm(input_ids=rest, attention_mask=self._mask(1, len(ids)), use_cache=True, **{self._cache_kw: cache})
            self.forward_tokens += len(ids) - n
            self.prefixes.put(ids, cache)
        return cache

    @torch.no_grad()
    def _answer_choices(self, prompts: list[list[int]], requests: list[ChatRequest]) -> list[Reply]:
        started = time.perf_counter()
        shared = prompts[0]
        n = len(shared)
        for p in prompts[1:]:
            n = _common_prefix(shared[:n], p)
        n = min(n, min(len(p) for p in prompts) - 1)  # every item keeps at least one token of its own
        prefix = self._prefix_cache(shared[:n]) if n > 0 else None
        body = self.lm.base_model
        head = self.lm.get_output_embeddings()
        replies: list[Reply] = []
        for lo in range(0, len(prompts), self.concurrency):
            chunk = prompts[lo:lo + self.concurrency]
            lengths = [len(p) - n for p in chunk]
            width = max(lengths)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), n + width, dtype=torch.long)
            mask[:, :n] = 1
            for i, p in enumerate(chunk):
                ids[i, :lengths[i]] = torch.tensor(p[n:])
                mask[i, n:n + lengths[i]] = 1
            cache = None
            if prefix is not None:
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(len(chunk))
            hidden = body(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                          use_cache=cache is not None, **{self._cache_kw: cache}).last_hidden_state
            self.forward_tokens += int(sum(lengths))
            last = hidden[torch.arange(len(chunk)), torch.tensor(lengths) - 1]  # right padding: last real token
            logits = head(last).float()
            for i, request in enumerate(requests[lo:lo + self.concurrency]):
                scores = torch.stack([logits[i, self._choice_ids(c)].max() for c in request.choices])
                probs = torch.softmax(scores, 0)
                best = int(scores.argmax())
                replies.append(Reply(text=request.choices[best], prompt_tokens=len(chunk[i]),
                                     p_choice={c: float(probs[j]) for j, c in enumerate(request.choices)}))
        elapsed = (time.perf_counter() - started) / max(1, len(replies))
        for r in replies:
            r.latency_s = elapsed
        return replies

    @torch.no_grad()
    def _generate(self, prompt: list[int], max_tokens: int) -> Reply:
        started = time.perf_counter()
        cache = self._prefix_cache(prompt[:-1])
        next_ids = torch.tensor([prompt[-1:]], device=self.device)
        out: list[int] = []
        length = len(prompt)
        for _ in range(max_tokens):
            logits = self.lm(input_ids=next_ids, attention_mask=self._mask(1, length), use_cache=True,
                             **{self._cache_kw: cache}).logits[0, -1]
            self.forward_tokens += 1
            token = int(logits.argmax())
            if token in self.stop_ids:
                break
            out.append(token)
            next_ids = torch.tensor([[token]], device=self.device)
            length += 1
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        return Reply(text=text, prompt_tokens=len(prompt), completion_tokens=len(out),
                     latency_s=time.perf_counter() - started)

    def _run(self, requests: list[ChatRequest]) -> list[Reply]:
        with self._lock:  # one model, one caller at a time (features may run concurrently)
            return self._run_locked(requests)

    def _run_locked(self, requests: list[ChatRequest]) -> list[Reply]:
        prompts = [self.render(r) for r in requests]
        replies: list[Reply | None] = [None] * len(requests)
        closed = [i for i, r in enumerate(requests) if r.choices]
        if closed:
            answers = self._answer_choices([prompts[i] for i in closed], [requests[i] for i in closed])
            for i, a in zip(closed, answers):
                replies[i] = a
        for i, r in enumerate(requests):
            if not r.choices:
                replies[i] = self._generate(prompts[i], r.max_tokens)
        return replies  # type: ignore[return-value]

    async def complete(self, request: ChatRequest) -> Reply:
        return (await self.complete_many([request]))[0]

    async def complete_many(self, requests: list[ChatRequest], on_reply=None) -> list[Reply]:
        if not requests:
            return []
        replies = await asyncio.to_thread(self._run, requests)
        if on_reply is not None:
            for i, r in enumerate(replies):
                on_reply(i, r)
        return replies
