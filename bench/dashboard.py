"""Benchmark of `bitlens dashboard`: wall time (with its stages), peak RSS and site size for every live feature.

Target (issue 15): all live features of the demo BAE (d' = 2304, 200k tokens) in <= 2 minutes on 2 cores, site
under 100 MB. Run it on the demo run under the shared lock:

    flock /tmp/bitlens-heavy.lock python bench/dashboard.py --coder runs/demo/bae --store runs/demo/activations \\
        --out runs/bench/dash --json runs/bench/dashboard.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bitlens.report.dashboard import DashboardConfig, run_dashboard  # noqa: E402


def site_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coder", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", default="runs/bench/dash")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = run_dashboard(DashboardConfig(coder=args.coder, store=args.store, out=args.out, progress=False),
                           echo=lambda line: print(line, file=sys.stderr, flush=True))
    wall = time.perf_counter() - started
    size, files = site_size(Path(args.out))
    header = result.summary["header"]
    report = {"wall_s": wall, "stages_s": header["seconds"], "live_features": header["n_live"],
              "width": header["width"], "tokens": header["n_rows"], "site_bytes": size, "site_files": files,
              "largest_page_bytes": max(p.stat().st_size for p in (Path(args.out) / "features").glob("*.html")),
              "index_bytes": (Path(args.out) / "index.html").stat().st_size,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": args.threads,
              "cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
              "fvu": header["fvu"], "l0": header["l0"], "entropy_bits": header["entropy_bits"]}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
