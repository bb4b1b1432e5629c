"""SQLite response cache: every LLM reply, keyed by a hash of backend, model, messages, parameters and the
prompt template version. Re-runs replay from it at zero cost. API keys never enter it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from ..redact import redact
from .backends.base import ChatRequest, Reply

_SCHEMA = """CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY, backend TEXT, model TEXT, template TEXT, text TEXT, p_choice TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL, created REAL)"""


def cache_key(identity: tuple[str, str], request: ChatRequest, template: str, endpoint: str = "") -> str:
    """``endpoint``: the server's base URL for HTTP backends, so two servers serving the same model name never
    share replies (absent for local backends, whose keys are unchanged)."""
    payload = {"backend": identity[0], "model": identity[1], "messages": [list(m) for m in request.messages],
               "params": {"temperature": 0.0, "max_tokens": request.max_tokens, "choices": list(request.choices)},
               "template": template}
    if endpoint:
        payload["endpoint"] = endpoint
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    """Replies that came back without an error; failed requests are not cached, so a re-run retries them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(_SCHEMA)
        self.db.commit()

    def get(self, key: str) -> Reply | None:
        row = self.db.execute("SELECT text, p_choice, prompt_tokens, completion_tokens, latency_s FROM replies "
                              "WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Reply(text=row[0], p_choice=json.loads(row[1]), prompt_tokens=row[2], completion_tokens=row[3],
                     latency_s=row[4], extra={"cached": True})

    def put_many(self, items: list[tuple[str, tuple[str, str], str, Reply]]) -> None:
        rows = [(key, ident[0], ident[1], template, redact(r.text), json.dumps(r.p_choice), r.prompt_tokens,
                 r.completion_tokens, r.latency_s, time.time()) for key, ident, template, r in items if not r.error]
        self.db.executemany("INSERT OR REPLACE INTO replies VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        self.db.commit()

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        self.db.close()
