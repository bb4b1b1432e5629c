"""The OpenAI-compatible backend (real `openai` SDK) against a loopback server speaking chat completions,
including 429 with Retry-After, 500, malformed JSON, timeouts, authentication failure and the circuit breaker.
Transport retries are the SDK's (its backoff starts at 0.5 s); malformed replies are re-asked by the backend."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bitlens.interpretation.backends import make_backend
from bitlens.interpretation.backends.base import BackendFatal, ChatRequest
from bitlens.interpretation.cache import ResponseCache
from bitlens.interpretation.client import LLMClient

KEY = "sk-test-secret-123"


class ChatServer:
    """Answers POST /v1/chat/completions from a script of behaviours (one per request, then 'ok')."""

    def __init__(self, port: int = 0):
        self.script: list[str] = []
        self.requests: list[dict] = []
        self.auth: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.auth.append(self.headers.get("Authorization", ""))
                action = server.script.pop(0) if server.script else "ok"
                if action == "429":
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.3"})
                if action == "500":
                    return self._send(500, {"error": {"message": "boom"}})
                if action == "401":
                    return self._send(401, {"error": {"message": "bad key"}})
                if action == "401-echo":  # some proxies echo the request headers back
                    return self._send(401, {"error": {"message": "invalid key in header Authorization: "
                                                                 + self.headers.get("Authorization", "")}})
                if action == "malformed":
                    return self._raw(200, b'{"id": "x", "choices": [')
                if action == "slow":
                    time.sleep(1.5)
                text = "Yes" if "yes please" in json.dumps(body["messages"]) else "A phrase."
                self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}})

            def _send(self, status, payload, headers=None):
                self._raw(status, json.dumps(payload).encode(), headers)

            def _raw(self, status, data, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = ChatServer()
    yield s
    s.close()


@pytest.fixture()
def backend(server, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", KEY)
    b = make_backend("openai:test-model", base_url=server.url, api_key_env="MY_LLM_KEY", timeout=0.8, retries=2)
    b.backoff_s = 0.05  # pause before re-asking after a malformed reply
    return b


REQ = ChatRequest(messages=(("system", "judge"), ("user", "yes please")), max_tokens=3, choices=("Yes", "No"))


def run(coro):
    return asyncio.run(coro)


def test_plain_reply_with_usage_and_key_from_env(server, backend):
    reply = run(backend.complete(REQ))
    assert reply.text == "Yes" and reply.prompt_tokens == 11 and reply.completion_tokens == 2 and not reply.error
    body = server.requests[0]
    assert body["model"] == "test-model" and body["temperature"] == 0 and body["max_tokens"] == 3
    assert body["messages"] == [{"role": "system", "content": "judge"}, {"role": "user", "content": "yes please"}]
    assert server.auth[0] == f"Bearer {KEY}"


@pytest.mark.parametrize("failure", ["500", "malformed", "slow"])
def test_transient_failures_are_retried(server, backend, failure):
    server.script = [failure, failure]
    reply = run(backend.complete(REQ))
    assert reply.text == "Yes" and not reply.error and len(server.requests) == 3


def test_429_honours_retry_after(server, backend):
    server.script = ["429"]
    started = time.perf_counter()
    reply = run(backend.complete(REQ))
    assert reply.text == "Yes" and len(server.requests) == 2
    assert time.perf_counter() - started >= 0.3  # waited as the server asked, not the 0.05 s backoff


def test_exhausted_retries_give_an_error_reply_then_the_breaker_opens(server, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", KEY)
    backend = make_backend("openai:test-model", base_url=server.url, api_key_env="MY_LLM_KEY", retries=1)
    backend.breaker_threshold = 2
    server.script = ["500"] * 8
    first = run(backend.complete(REQ))
    second = run(backend.complete(REQ))
    assert first.error.startswith("HTTP 500") and second.error and first.text == ""
    with pytest.raises(BackendFatal, match="circuit breaker"):
        run(backend.complete(REQ))
    assert len(server.requests) == 4  # 2 requests x (1 + 1 retry); the third never left


def test_authentication_failure_is_fatal(server, backend):
    server.script = ["401"]
    with pytest.raises(BackendFatal, match="HTTP 401"):
        run(backend.complete(REQ))
    assert len(server.requests) == 1


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(BackendFatal, match="NO_SUCH_KEY_VAR"):
        make_backend("openai:gpt-x", api_key_env="NO_SUCH_KEY_VAR")


def test_client_caches_replies_and_never_stores_the_key(server, backend, tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    client = LLMClient(backend, cache, price_input=1.0, price_output=2.0)
    requests = [ChatRequest(messages=(("user", f"item {i}"),), max_tokens=8) for i in range(5)]
    first = run(client.ask(requests, "tmpl-v1", "explain"))
    assert [r.text for _, r in first] == ["A phrase."] * 5 and client.usage.calls == 5
    assert client.usage.cost == pytest.approx(5 * (11 * 1.0 + 2 * 2.0) / 1e6)
    again = run(client.ask(requests, "tmpl-v1", "explain"))
    assert client.usage.calls == 5 and client.usage.cache_hits == 5 and [r.text for _, r in again] == ["A phrase."] * 5
    run(client.ask(requests[:1], "tmpl-v2", "explain"))  # a new template version is a new key
    assert client.usage.calls == 6 and len(server.requests) == 6
    cache.close()
    for f in tmp_path.iterdir():
        assert KEY.encode() not in f.read_bytes()


def test_failed_replies_are_not_cached(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", KEY)
    backend = make_backend("openai:test-model", base_url=server.url, api_key_env="MY_LLM_KEY", retries=0)
    cache = ResponseCache(tmp_path / "cache.sqlite")
    client = LLMClient(backend, cache)
    server.script = ["500"]
    (_, reply), = run(client.ask([REQ], "t", "score"))
    assert reply.error and len(cache) == 0 and client.usage.errors == 1
    (_, reply), = run(client.ask([REQ], "t", "score"))
    assert reply.text == "Yes" and len(cache) == 1


def test_max_calls_refuses_a_batch_it_cannot_cover(server, backend, tmp_path):
    from bitlens.interpretation.client import BudgetExhausted

    client = LLMClient(backend, ResponseCache(tmp_path / "c.sqlite"), max_calls=3)
    requests = [ChatRequest(messages=(("user", f"q{i}"),)) for i in range(4)]
    run(client.ask(requests[:2], "t"))
    with pytest.raises(BudgetExhausted):
        run(client.ask(requests[2:], "t"))
    assert len(server.requests) == 2


def test_replay_answers_from_cache_and_fails_on_a_miss(server, backend, tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    run(LLMClient(backend, cache).ask([REQ], "t"))
    replay = LLMClient(make_backend("replay:openai:test-model", base_url=server.url), cache)  # same server's replies
    (_, reply), = run(replay.ask([REQ], "t"))
    assert reply.text == "Yes" and replay.usage.calls == 0
    with pytest.raises(BaseException) as info:
        run(replay.ask([ChatRequest(messages=(("user", "unseen"),))], "t"))
    assert "no cached reply" in str(info.value.exceptions[0] if hasattr(info.value, "exceptions") else info.value)


def test_reasoning_models_get_a_completion_limit_and_no_temperature(server, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", KEY)
    b = make_backend("openai:o-mini", base_url=server.url, api_key_env="MY_LLM_KEY", reasoning=True)
    reply = run(b.complete(REQ))
    body = server.requests[0]
    assert reply.text == "Yes" and "temperature" not in body and "max_tokens" not in body
    assert body["max_completion_tokens"] >= 1024 and b.identity == ("openai", "o-mini@reasoning")
