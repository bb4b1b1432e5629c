"""Benchmark of the local judge (embedded SmolLM2-135M-Instruct) used by `bitlens interpret`.

Measured in one run on the same judge prompts (real items of the demo store, default-mode template):
  naive   one full forward pass per prompt (what a plain chat call costs),
  reused  LocalBackend: the shared prompt prefix (instructions, worked examples, explanation) computed once and
          its key/value cache reused, items in right-padded batches, the answer read from the Yes/No logits.
Prints items/s of both, the speed-up, and whether both give the same answers.

Usage: python bench/interp_judge.py [--items 32] [--batch 8] [--json runs/bench/interp_judge.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bitlens.data.store import ActivationStore  # noqa: E402
from bitlens.interpretation.backends.local_transformers import LocalBackend  # noqa: E402
from bitlens.interpretation.corpus import TokenTable  # noqa: E402
from bitlens.interpretation.display import mark_context  # noqa: E402
from bitlens.interpretation.prompts import judge_request  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="/work/main/runs/demo/activations")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", default="runs/bench/interp_judge.json")
    args = parser.parse_args()

    table = TokenTable(ActivationStore(args.store))
    rows = torch.randperm(table.n, generator=torch.Generator().manual_seed(0))[:args.items].tolist()
    requests = [judge_request("words about ships and the sea", mark_context(*table.context(r, 16, 3))) for r in rows]
    backend = LocalBackend("embedded", concurrency=args.batch, dtype=args.dtype)
    asyncio.run(backend.complete_many(requests[:2]))  # warm-up (and caches the shared prefix once)
    backend.prefixes.entries.clear()

    started = time.perf_counter()
    reused = asyncio.run(backend.complete_many(requests))
    t_reused = time.perf_counter() - started

    started = time.perf_counter()
    naive = []
    with torch.no_grad():
        for r in requests:
            logits = backend.lm(input_ids=torch.tensor([backend.render(r)])).logits[0, -1]
            yes, no = (logits[backend._choice_ids(c)].max() for c in r.choices)
            naive.append("Yes" if yes > no else "No")
    t_naive = time.perf_counter() - started

    result = {"items": len(requests), "batch": args.batch, "dtype": args.dtype, "threads": torch.get_num_threads(),
              "prompt_tokens_mean": sum(len(backend.render(r)) for r in requests) / len(requests),
              "naive_items_per_s": len(requests) / t_naive, "reused_items_per_s": len(requests) / t_reused,
              "speedup": t_naive / t_reused, "same_answers": [r.text for r in reused] == naive}
    print(json.dumps(result, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
