"""Hardening (issue 13): one test per failure an adversarial pass found. Each reproduces the failure as the user
met it (the CLI in-process, real files, a real HTTP server on 127.0.0.1 or a port with nothing listening)."""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

import numpy as np
import pytest

import bitlens
from bitlens.cli.main import main
from bitlens.io import BitlensError
from data_fixtures import tiny_model_dir, write_corpus
from interp_fixtures import ScriptedLLM, make_planted_coder, make_planted_store
from test_interp_http import ChatServer
from test_store import make_store

FAST = ["--steps", "40", "--batch-size", "64", "--eval-every", "20", "--checkpoint-every", "20", "--no-progress"]
KEY = "sk-live-ABCDEF0123456789secret"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitlens: error:") and "\n" not in err, err
    return err


def _error_line(capsys) -> str:
    """The one error line of a command that also draws progress bars on stderr (extract)."""
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("bitlens:")]
    assert len(lines) == 1 and lines[0].startswith("bitlens: error:") and "Traceback" not in err, err
    return lines[0]


def _acts(path: Path, seed: int = 0, rows: int = 600, dim: int = 6) -> Path:
    np.save(path, np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted_bad")
    return make_planted_store(root / "store"), make_planted_coder(root / "coder")


# ---- 1: a failed LLM request is never recorded as done ---------------------------------------------------------
def test_1_unreachable_server_fails_the_run_and_a_rerun_retries(planted, tmp_path, capsys, monkeypatch):
    store, coder = planted
    port = _free_port()  # nothing listens here yet
    monkeypatch.setenv("BITLENS_TEST_KEY", "x")
    args = ["interpret", "--coder", str(coder), "--store", str(store), "--out", str(tmp_path / "run"),
            "--no-progress", "--llm", "openai:m", "--base-url", f"http://127.0.0.1:{port}/v1",
            "--api-key-env", "BITLENS_TEST_KEY", "--retries", "1", "--timeout", "5", "--features", "0,1,2,5"]
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert "4 of 4" in err and "APIConnectionError" in err
    records = [json.loads(x) for x in (tmp_path / "run" / "features.jsonl").read_text().splitlines()]
    assert {r["status"] for r in records} == {"request_failed"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["complete"] is False
    server = ChatServer(port=port)  # the server comes up: the rerun retries every failed unit
    try:
        assert main(args) == 0
    finally:
        server.close()
    assert len(server.requests) > 4
    records = [json.loads(x) for x in (tmp_path / "run" / "features.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" and r["explanation"] and r["score"] for r in records)


def test_1_rate_limited_and_server_errors_are_not_done_either(planted, tmp_path, capsys, monkeypatch):
    store, coder = planted
    monkeypatch.setenv("BITLENS_TEST_KEY", "x")
    server = ChatServer()
    server.script = ["429", "500"]  # retries 0: the first two explain requests fail for good
    args = ["interpret", "--coder", str(coder), "--store", str(store), "--out", str(tmp_path / "run"),
            "--no-progress", "--llm", "openai:m", "--base-url", server.url, "--api-key-env",
            "BITLENS_TEST_KEY", "--retries", "0", "--features", "0,1,2", "--concurrency", "1"]
    try:
        assert main(args) == 2
        err = _one_line_error(capsys)
        assert "2 of 3" in err and "HTTP 429 x1" in err and "HTTP 500 x1" in err
        import sqlite3

        with sqlite3.connect(tmp_path / "run" / "units.sqlite") as db:
            done = sorted(db.execute("SELECT feature, stage FROM units").fetchall())
        assert done == [(2, "explain"), (2, "score")]  # nothing of features 0 and 1 is recorded as done
        calls = len(server.requests)
        assert main(args) == 0  # the rerun asks for the two failed features again
        assert len(server.requests) > calls
    finally:
        server.close()
    statuses = [json.loads(x)["status"] for x in (tmp_path / "run" / "features.jsonl").read_text().splitlines()]
    assert statuses == ["ok", "ok", "ok"]


class _Breaker(ScriptedLLM):
    """Answers a few requests, then fails every one like an open circuit breaker."""

    def __init__(self, ok_calls: int):
        super().__init__()
        self.ok_calls = ok_calls

    async def complete(self, request):
        from bitlens.interpretation.backends.base import BackendFatal

        if len(self.prompts) >= self.ok_calls:
            raise BackendFatal("circuit breaker open: 5 consecutive failed requests to scripted")
        return await super().complete(request)


def test_1_no_record_says_ok_without_its_result(planted, tmp_path):
    from bitlens.interpretation.config import InterpretConfig
    from bitlens.interpretation.pipeline import run_interpret

    store, coder = planted
    cfg = InterpretConfig(coder=str(coder), store=str(store), out=str(tmp_path / "o"), progress=False,
                          features=[0, 1, 2, 5])
    with pytest.raises(BitlensError, match="circuit breaker"):
        run_interpret(cfg, backend=_Breaker(ok_calls=6), echo=lambda s: None)
    records = [json.loads(x) for x in (tmp_path / "o" / "features.jsonl").read_text().splitlines()]
    assert records and all(r.get("score") for r in records if r["status"] == "ok")
    assert any(r["status"] != "ok" for r in records)


# ---- 2: API keys never leave the process ----------------------------------------------------------------------
def test_2_a_server_echoing_the_key_does_not_leak_it(planted, tmp_path, capsys, monkeypatch):
    store, coder = planted
    server = ChatServer()
    server.script = ["401-echo"]
    monkeypatch.setenv("BITLENS_TEST_KEY", KEY)
    try:
        code = main(["interpret", "--coder", str(coder), "--store", str(store), "--out", str(tmp_path / "run"),
                     "--no-progress", "--llm", "openai:m", "--base-url", server.url,
                     "--api-key-env", "BITLENS_TEST_KEY", "--features", "0"])
    finally:
        server.close()
    assert server.auth[0] == f"Bearer {KEY}"  # it really was sent, and echoed back
    assert code == 2
    err = _one_line_error(capsys)
    assert "401" in err and KEY not in err and "ABCDEF0123" not in err
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes() and b"Bearer sk" not in f.read_bytes(), f


def test_2_redact_patterns():
    from bitlens.redact import redact, register_secret

    register_secret("my-private-token-42")
    text = redact('proxy said: Authorization: Bearer abc.DEF-123_xyz and key my-private-token-42 "x"')
    assert "abc.DEF" not in text and "my-private-token-42" not in text and "Bearer [REDACTED]" in text
    prose = "the bearer bonds, basic token counts and a task-force"  # corpus text stays as it is
    assert redact(prose) == prose


def test_2_log_records_are_redacted(caplog):
    import logging

    from bitlens.redact import register_secret

    register_secret("another-secret-value-7")
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("sending %s with %s", "Bearer tok_12345678", "another-secret-value-7")
    assert "tok_12345678" not in caplog.text and "another-secret-value-7" not in caplog.text


def test_2_reply_cache_is_per_server(tmp_path, monkeypatch):
    import asyncio

    from bitlens.interpretation.backends import make_backend
    from bitlens.interpretation.backends.base import ChatRequest
    from bitlens.interpretation.cache import ResponseCache
    from bitlens.interpretation.client import LLMClient

    monkeypatch.setenv("BITLENS_TEST_KEY", KEY)
    a, b = ChatServer(), ChatServer()
    try:
        cache = ResponseCache(tmp_path / "cache.sqlite")
        request = [ChatRequest(messages=(("user", "hello"),))]
        for server in (a, b):
            backend = make_backend("openai:same-model", base_url=server.url, api_key_env="BITLENS_TEST_KEY")
            asyncio.run(LLMClient(backend, cache).ask(request, "t"))
        assert len(a.requests) == 1 and len(b.requests) == 1  # B was asked, not answered from A's reply
        cache.close()
    finally:
        a.close()
        b.close()


# ---- 3: non-finite values never enter a store, a run or a JSON file ------------------------------------------
def test_3_extraction_refuses_non_finite_rows(tmp_path):
    from bitlens.data.store import StoreWriter

    writer = StoreWriter.open(tmp_path / "s", settings={}, layers=[3], dim=4, dtype="float32", shard_rows=100,
                              documents=lambda: [{"index": i, "id": f"d{i}"} for i in range(3)],
                              token_texts=lambda: ["a"])
    acts = np.ones((5, 4), np.float32)
    acts[3, 1] = np.nan
    meta = np.array([[2, 0, 0, p, 0] for p in range(10, 15)], np.int32)
    with pytest.raises(BitlensError, match=r"document 2.*position 13"):
        writer.add({3: acts}, meta, cursor=(1, 0), excluded={"special": 0, "first": 0}, sequences=1)


def test_3_a_store_with_nan_is_refused_at_read_time(tmp_path, capsys):
    store = make_store(tmp_path / "store")
    shard = tmp_path / "store" / "shards" / "000001" / "layer_3.npy"
    data = np.load(shard)
    data[7, 4] = np.nan
    np.save(shard, data)
    out = tmp_path / "run"
    assert main(["train", "--store", str(store), "--layer", "3", "--out", str(out), *FAST]) == 2
    err = _one_line_error(capsys)
    assert "000001" in err and "NaN" in err
    assert not (out / "checkpoint").exists()
    clean = make_store(tmp_path / "clean")
    assert main(["train", "--store", str(clean), "--layer", "3", "--out", str(tmp_path / "ok"), *FAST]) == 0
    check = json.loads((tmp_path / "ok" / "manifest.json").read_text())["inputs"]["finite_check"]
    assert check["shards"] == 4 and check["rows"] == 935


def test_3_training_stops_when_the_loss_becomes_non_finite(tmp_path, capsys):
    acts = _acts(tmp_path / "a.npy")
    out = tmp_path / "run"
    assert main(["train", "--activations", str(acts), "--out", str(out), "--lr", "1e30", *FAST]) == 2
    err = _one_line_error(capsys)
    assert "non-finite" in err and "step" in err
    assert not (out / "final_metrics.json").exists()
    for line in (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))


def test_3_json_files_never_hold_nan(tmp_path):
    from bitlens.io import write_json

    write_json(tmp_path / "x.json", {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.float64("-inf")})
    text = (tmp_path / "x.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"a": None, "b": [None, 1.5], "c": None}


# ---- 4: damaged run files give one line naming the file ---------------------------------------------------------
@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    assert main(["train", "--activations", str(_acts(root / "a.npy")), "--out", str(root / "run"), *FAST]) == 0
    return root / "run"


def _trained(tmp_path: Path, source: Path) -> Path:
    """A copy of a finished 40-step run, and its activations (same bytes) at tmp_path/a.npy."""
    import shutil

    _acts(tmp_path / "a.npy")
    return Path(shutil.copytree(source, tmp_path / "run"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


DAMAGE = {
    "model_truncated": ("model.safetensors", lambda p: _truncate(p), "model.safetensors"),
    "optimizer_truncated": ("optimizer.safetensors", lambda p: _truncate(p), "optimizer.safetensors"),
    "state_not_json": ("trainer_state.json", lambda p: p.write_text('{"step": 4'), "not valid JSON"),
    "state_unknown_field": ("trainer_state.json", lambda p: _edit_json(p, lambda d: d.update(colour="red")),
                            "colour"),
    "state_config_unknown_field": ("trainer_state.json",
                                   lambda p: _edit_json(p, lambda d: d["train_config"].update(bogus=1)), "bogus"),
    "arch_list": ("cfg.json", lambda p: _edit_json(p, lambda d: d.update(architecture=["bae"])), "architecture"),
    "d_in_string": ("cfg.json", lambda p: _edit_json(p, lambda d: d["config"].update(d_in="6")), "d_in"),
    "d_in_float": ("cfg.json", lambda p: _edit_json(p, lambda d: d["config"].update(d_in=16.5)), "d_in"),
    "config_null": ("cfg.json", lambda p: _edit_json(p, lambda d: d.update(config=None)), "config"),
    "surrogate_unknown": ("cfg.json", lambda p: _edit_json(p, lambda d: d["config"].update(surrogate="magic")),
                          "surrogate"),
    "sizes_absurd": ("cfg.json", lambda p: _edit_json(p, lambda d: d["config"].update(d_in=4000)), "4000"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_4_damaged_run_files_give_one_line(tmp_path, capsys, damage, trained_once):
    out = _trained(tmp_path, trained_once)
    name, spoil, words = DAMAGE[damage]
    target = out / "checkpoint" / name
    spoil(target)
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["train", "--activations", str(tmp_path / "a.npy"), "--out", str(out), "--resume",
                 "--no-progress"]) == 2
    err = _one_line_error(capsys)
    assert f"bitlens: error: {target}:" in err and words in err, err
    assert _snapshot(out) == before
    if name in ("cfg.json", "model.safetensors"):
        with pytest.raises(BitlensError, match=words):
            bitlens.load(out)


def test_4_absurd_sizes_are_refused_before_allocating(tmp_path, trained_once):
    import tracemalloc

    out = _trained(tmp_path, trained_once)
    _edit_json(out / "checkpoint" / "cfg.json", lambda d: d["config"].update(d_in=40000, d_code=0, expansion=4))
    tracemalloc.start()
    with pytest.raises(BitlensError, match="40000"):
        bitlens.load(out)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6  # 40000 x 160000 float32 weights would be 25 GB


# ---- 5: --resume on other data --------------------------------------------------------------------------------
def test_5_resume_with_other_data_of_the_same_dimension(tmp_path, capsys):
    first, second = _acts(tmp_path / "a.npy", seed=0), _acts(tmp_path / "b.npy", seed=1)
    out = tmp_path / "run"
    assert main(["train", "--activations", str(first), "--out", str(out), *FAST]) == 0
    capsys.readouterr()  # the short run's own report (and its missed-target warning) is not the error under test
    before = _snapshot(out)
    assert main(["train", "--activations", str(second), "--out", str(out), "--resume", "--steps", "60",
                 "--no-progress"]) == 2
    assert "--allow-new-data" in _one_line_error(capsys)
    assert _snapshot(out) == before
    assert main(["train", "--activations", str(second), "--out", str(out), "--resume", "--steps", "60",
                 "--allow-new-data", "--no-progress"]) == 0
    seen = json.loads((out / "manifest.json").read_text())["inputs_seen"]
    assert [s["sha256"] for s in seen] == [bitlens.io.file_fingerprint(p) for p in (first, second)]
    assert [s["from_step"] for s in seen] == [0, 40]
    # the same data again needs no flag
    assert main(["train", "--activations", str(first), "--out", str(out), "--resume", "--steps", "70",
                 "--no-progress"]) == 0


# ---- 6: disk full during extraction ---------------------------------------------------------------------------
def test_6_disk_full_during_extraction_is_one_line(tmp_path, capsys, monkeypatch):
    import bitlens.data.store as store_module

    real_save = np.save

    def full_disk(file, arr, *args, **kwargs):
        if "layer_" in str(file):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(file, arr, *args, **kwargs)

    monkeypatch.setattr(store_module.np, "save", full_disk)
    out = tmp_path / "store"
    assert main(["extract", "--model", str(tiny_model_dir()), "--corpus", str(write_corpus(tmp_path / "c")),
                 "--out", str(out), "--max-tokens", "50"]) == 2
    err = _error_line(capsys)
    assert "no space left" in err.lower() and str(out) in err and "bytes" in err
    assert not list((out / "shards").glob("*")) if (out / "shards").exists() else True


# ---- 7: --out that is a file ----------------------------------------------------------------------------------
def test_7_out_that_is_a_regular_file(tmp_path, capsys):
    target = tmp_path / "plain.txt"
    target.write_text("keep me")
    assert main(["train", "--activations", str(_acts(tmp_path / "a.npy")), "--out", str(target), *FAST]) == 2
    assert "is a file" in _one_line_error(capsys)
    assert main(["extract", "--model", str(tiny_model_dir()), "--corpus", str(write_corpus(tmp_path / "c")),
                 "--out", str(target), "--max-tokens", "20"]) == 2
    assert "is a file" in _error_line(capsys)
    assert target.read_text() == "keep me"


# ---- 8: a dead run's metrics ----------------------------------------------------------------------------------
def test_8_fresh_start_after_a_killed_run_does_not_append(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # what a run killed (SIGKILL) at step 30, before its first checkpoint, leaves behind
    (out / "metrics.jsonl").write_text(json.dumps({"step": 20, "train/loss": 1.0}) + "\n")
    assert main(["train", "--activations", str(_acts(tmp_path / "a.npy")), "--out", str(out), *FAST]) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [20, 40]


# ---- 9: a file that is not .npy -------------------------------------------------------------------------------
def test_9_random_bytes_named_npy(tmp_path, capsys):
    path = tmp_path / "noise.npy"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert main(["train", "--activations", str(path), "--out", str(tmp_path / "run"), *FAST]) == 2
    err = _one_line_error(capsys)
    assert "not a valid .npy file" in err and "pickle" not in err.lower()
    store = make_store(tmp_path / "store")
    (store / "shards" / "000000" / "layer_3.npy").write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(BitlensError) as info:
        from bitlens.data.store import ActivationStore

        ActivationStore(store)
    assert "not a valid .npy file" in str(info.value) and "pickle" not in str(info.value).lower()
