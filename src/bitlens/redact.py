"""Secrets never leave the process: API keys and bearer tokens are masked in messages, logs, JSON files and caches.

A backend registers the key it read from the environment (``register_secret``); ``redact`` then masks that exact
value and anything that looks like an authorisation token (``Bearer ...``, ``sk-...``), wherever it came from
(some proxies echo the request's Authorization header in their error body). Registering a secret also installs
a log-record factory, so every log record, whichever library made it, is masked before any handler sees it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "[REDACTED]"
_SECRETS: set[str] = set()
# "Bearer", then a token of the characters RFC 6750 allows (never quotes or backslashes, so JSON stays valid) that
# looks generated: 8+ characters with a digit, or 20+. Corpus text such as "bearer bonds" is left alone.
_TOKEN = r"[A-Za-z0-9._~+/=:-]"
_AUTH = re.compile(rf"\b(Bearer|bearer|BEARER)(\s+)(?:(?={_TOKEN}*\d){_TOKEN}{{8,}}|{_TOKEN}{{20,}})")
_KEY_LIKE = re.compile(r"\bsk-(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{8,}")  # OpenAI-style keys
_installed = False


def register_secret(value: str) -> None:
    """Mask ``value`` from now on (values shorter than 6 characters would mask ordinary words and are skipped)."""
    if value and len(value) >= 6:
        _SECRETS.add(value)
        _install_log_redaction()


def redact(text: str) -> str:
    """``text`` with registered secrets and authorisation-looking tokens replaced by ``[REDACTED]``."""
    if not isinstance(text, str) or not text:
        return text
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    text = _AUTH.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _KEY_LIKE.sub(MASK, text)


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like structure with every string redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


def _install_log_redaction() -> None:
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call: leave it to logging's own error handling
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
