"""Time of ``import bitlens`` in a fresh interpreter, and which heavy modules it pulls in.

    python bench/import_time.py [--src DIR] [--runs 7]

``--src`` points at another checkout's ``src`` folder (e.g. an older commit in a git worktree) so two versions can
be compared on the same machine in one sitting. Prints the median and spread of the wall time of the import alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

PROBE = ("import time, sys; t = time.perf_counter(); import bitlens; dt = time.perf_counter() - t; "
         "import json; print(json.dumps({'seconds': dt, 'torch': 'torch' in sys.modules, "
         "'matplotlib': 'matplotlib' in sys.modules, 'pyplot': 'matplotlib.pyplot' in sys.modules, "
         "'transformers': 'transformers' in sys.modules}))")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=None, help="a src folder to import bitlens from (default: the installed one)")
    ap.add_argument("--runs", type=int, default=7, help="fresh interpreters to time (default: 7)")
    a = ap.parse_args()
    env = dict(os.environ)
    if a.src:
        env["PYTHONPATH"] = a.src
    results = [json.loads(subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                                         check=True).stdout) for _ in range(a.runs)]
    times = sorted(r["seconds"] for r in results)
    print(json.dumps({"src": a.src or "installed", "runs": a.runs, "median_s": statistics.median(times),
                      "min_s": times[0], "max_s": times[-1], "imports_torch": results[0]["torch"],
                      "imports_matplotlib": results[0]["matplotlib"], "imports_pyplot": results[0]["pyplot"],
                      "imports_transformers": results[0]["transformers"]}))


if __name__ == "__main__":
    main()
