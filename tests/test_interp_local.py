"""The local transformers backend on a tiny random Llama: batched Yes/No answers with a reused prompt prefix equal
the answers of plain full forward passes, and greedy generation equals `generate`."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

from bitlens.interpretation.backends.base import ChatRequest
from bitlens.interpretation.backends.local_transformers import LocalBackend
from data_fixtures import tiny_model_dir

TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}")


@pytest.fixture(scope="module")
def backend():
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = tiny_model_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = TEMPLATE
    model = LlamaForCausalLM.from_pretrained(folder).eval()
    return LocalBackend("tiny", concurrency=3, loaded=SimpleNamespace(model=model, tokenizer=tok, fingerprint="tiny"))


def _judge(text: str) -> ChatRequest:
    return ChatRequest(messages=(("system", "The whale rose from the sea. Answer Yes or No."),
                                 ("user", text)), max_tokens=2, choices=("Yes", "No"))


def _reference(backend, request) -> dict[str, float]:
    ids = torch.tensor([backend.render(request)])
    with torch.no_grad():
        logits = backend.lm(input_ids=ids).logits[0, -1]
    scores = torch.stack([logits[backend._choice_ids(c)].max() for c in request.choices])
    return dict(zip(request.choices, torch.softmax(scores, 0).tolist()))


def test_batched_choices_with_prefix_reuse_match_full_forward(backend):
    requests = [_judge(t) for t in ["The captain walked.", "Our nation is strong!", "Why?", "Taxes were lowered last year.",
                                    "Congress met in December."]]
    replies = asyncio.run(backend.complete_many(requests))
    for request, reply in zip(requests, replies):
        ref = _reference(backend, request)
        assert reply.p_choice == pytest.approx(ref, abs=1e-4)
        assert reply.text == max(ref, key=ref.get)
    # the shared prefix ran once: far fewer tokens than rendering every prompt in full
    assert backend.forward_tokens < sum(len(backend.render(r)) for r in requests)


def test_second_batch_reuses_the_cached_prefix(backend):
    requests = [_judge(t) for t in ["The harpoon flew.", "Trade grew."]]
    before = backend.forward_tokens
    asyncio.run(backend.complete_many(requests))
    shared = backend.render(requests[0])
    suffix = sum(len(backend.render(r)) for r in requests) - 2 * len(shared)
    assert backend.forward_tokens - before < len(shared)  # the system prompt was not recomputed
    assert suffix < len(shared)


def test_greedy_generation_matches_generate(backend):
    request = ChatRequest(messages=(("user", "The whale rose from"),), max_tokens=6)
    reply = asyncio.run(backend.complete(request))
    ids = torch.tensor([backend.render(request)])
    with torch.no_grad():
        out = backend.lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                  eos_token_id=sorted(backend.stop_ids), pad_token_id=0)
    expected = backend.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert reply.text == expected and reply.completion_tokens <= 6
    again = asyncio.run(backend.complete(request))  # prefix cache hit: same answer
    assert again.text == reply.text
