"""Where bitlens keeps converted models and fetched corpora between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The bitlens cache folder: ``$BITLENS_CACHE`` if set, else ``$XDG_CACHE_HOME/bitlens``,
    else ``~/.cache/bitlens``. Not created here; writers create what they need."""
    override = os.environ.get("BITLENS_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bitlens"
