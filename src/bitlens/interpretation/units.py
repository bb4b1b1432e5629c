"""Resumable work units: each (feature, stage) result is committed to SQLite as soon as it finishes, tagged
with the fingerprint of everything it depends on; a restarted run reuses matching units and redoes the rest."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from ..io import _json_default, json_safe
from ..redact import redact


class UnitStore:
    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS units (feature INTEGER, stage TEXT, fingerprint TEXT, "
                        "result TEXT, PRIMARY KEY (feature, stage))")
        self.db.commit()

    def get(self, feature: int, stage: str, fingerprint: str) -> Any | None:
        row = self.db.execute("SELECT fingerprint, result FROM units WHERE feature = ? AND stage = ?",
                              (feature, stage)).fetchone()
        if row is None or row[0] != fingerprint:
            return None
        return json.loads(row[1])

    def put(self, feature: int, stage: str, fingerprint: str, result: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO units VALUES (?, ?, ?, ?)",
                        (feature, stage, fingerprint, redact(json.dumps(json_safe(result), default=_json_default))))
        self.db.commit()

    def count(self, fingerprint: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM units WHERE fingerprint = ?", (fingerprint,)).fetchone()[0])

    def close(self) -> None:
        self.db.close()
