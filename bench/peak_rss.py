"""Peak memory (RSS) of `bitlens train --store` against the number of stored tokens (issue 18, item 5).

    python bench/peak_rss.py --json runs/bench/peak_rss.json

For each hidden size in ``--dims`` and each size in ``--tokens``, a store of synthetic rows (Gaussian, float16,
written through the library's ``StoreWriter``: shards, norms, sums, manifest, as `bitlens extract` writes them;
documents of ``--doc-tokens`` tokens) is built under ``--work``, and ``bitlens train --store`` runs on it in a
fresh process for ``--steps`` steps (d' = 4d, evaluation at the end on ``--eval-tokens`` held-out rows). The child
reports its own peak RSS (``ru_maxrss``), which counts the pages of memory-mapped shards it has touched. Memory
should be flat in the number of tokens: the ratio largest / smallest store is printed per d (target <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bitlens.data.store import StoreWriter  # noqa: E402

CHILD = """
import resource, sys
sys.path.insert(0, {src!r})
from bitlens.cli.main import main
try:
    code = main({argv!r})
finally:
    print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def build_store(path: Path, dim: int, tokens: int, doc_tokens: int, seed: int = 0) -> float:
    """A complete float16 store of ``tokens`` Gaussian rows of ``dim`` columns; returns the seconds it took."""
    started = time.perf_counter()
    if (path / "manifest.json").is_file():
        shutil.rmtree(path)
    n_docs = -(-tokens // doc_tokens)
    writer = StoreWriter.open(path, settings={"bench": "peak_rss", "dim": dim, "tokens": tokens}, layers=[0],
                              dim=dim, dtype="float16", shard_rows=65536,
                              documents=lambda: [{"index": i, "id": f"doc{i}"} for i in range(n_docs)],
                              token_texts=lambda: [f"t{i}" for i in range(1000)])
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 2.0, dim).astype(np.float32)  # unequal column scales, like hidden states
    done = 0
    while done < tokens:
        n = min(4096, tokens - done)
        rows = rng.standard_normal((n, dim), dtype=np.float32) * scale
        pos = np.arange(done, done + n)
        meta = np.stack([pos // doc_tokens, np.zeros(n, np.int64), (pos % doc_tokens) // 20, pos % doc_tokens,
                         pos % 1000], axis=1).astype(np.int32)
        writer.add({0: rows}, meta, cursor=(int(pos[-1] // doc_tokens), 0), excluded={}, sequences=1)
        done += n
    writer.finish()
    return time.perf_counter() - started


def train_peak_rss(store: Path, out: Path, steps: int, eval_tokens: int, src: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of `bitlens train --store` in a fresh process."""
    if out.exists():
        shutil.rmtree(out)
    argv = ["train", "--store", str(store), "--out", str(out), "--steps", str(steps), "--eval-every", str(steps),
            "--eval-tokens", str(eval_tokens), "--no-progress"]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD.format(src=str(src), argv=argv)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bitlens train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    kib = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KIB")]
    return kib[-1] / 1024, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[576, 2048])
    ap.add_argument("--tokens", type=int, nargs="+", default=[100_000, 300_000, 900_000])
    ap.add_argument("--doc-tokens", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench" / "peak_rss"), help="stores and runs go here")
    ap.add_argument("--src", default=str(ROOT / "src"),
                    help="bitlens sources the training runs with (e.g. an older checkout's src, for a before/after)")
    ap.add_argument("--keep", action="store_true", help="keep the stores (several GB) afterwards")
    ap.add_argument("--json", default=str(ROOT / "runs" / "bench" / "peak_rss.json"))
    args = ap.parse_args()

    work = Path(args.work)
    rows = []
    for dim in args.dims:
        for tokens in sorted(args.tokens):
            store = work / f"store_d{dim}_{tokens}"
            build = build_store(store, dim, tokens, args.doc_tokens)
            mib, seconds = train_peak_rss(store, work / f"run_d{dim}_{tokens}", args.steps, args.eval_tokens,
                                           Path(args.src))
            row = {"d": dim, "d_code": 4 * dim, "tokens": tokens,
                   "store_mib": round(sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2 ** 20, 1),
                   "peak_rss_mib": round(mib, 1), "train_seconds": round(seconds, 1),
                   "build_seconds": round(build, 1), "steps": args.steps, "load_average": os.getloadavg()[0],
                   "src": args.src}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not args.keep:
                shutil.rmtree(store)
                shutil.rmtree(work / f"run_d{dim}_{tokens}", ignore_errors=True)
    ratios = {}
    for dim in args.dims:
        mine = [r for r in rows if r["d"] == dim]
        lo, hi = min(mine, key=lambda r: r["tokens"]), max(mine, key=lambda r: r["tokens"])
        ratios[str(dim)] = round(hi["peak_rss_mib"] / lo["peak_rss_mib"], 3)
        print(f"d={dim}: peak RSS {lo['peak_rss_mib']:.0f} MiB at {lo['tokens']} tokens, {hi['peak_rss_mib']:.0f} MiB "
              f"at {hi['tokens']}: ratio {ratios[str(dim)]:.3f} (target <= 1.2)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "ratio_largest_vs_smallest": ratios,
                               "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
