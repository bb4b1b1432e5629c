"""Cost of the read-time NaN/inf check of an activation store (issue 13): the exponent-bit test that
``ActivationStore.check_finite`` uses against plain ``np.isfinite``, over every shard of one layer.

    python bench/store_finite_check.py /work/shared_runs/demo/activations --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bitlens.data.store import ActivationStore
from bitlens.data.store_format import _all_finite, _layer_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    store = ActivationStore(args.store)
    layer = store.default_layer(args.layer)
    arrays = [store._load(s["name"], _layer_file(layer)) for s in store.manifest["shards"]]
    size = sum(a.nbytes for a in arrays)
    for name, test in (("exponent bits", _all_finite), ("np.isfinite", lambda b: bool(np.isfinite(b).all()))):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            for a in arrays:
                for lo in range(0, len(a), 16384):
                    assert test(np.asarray(a[lo:lo + 16384]))
            times.append(time.perf_counter() - started)
        print(f"{name:>14}: {store.n_tokens} rows x {store.dim} {store.manifest['dtype']} ({size / 1e6:.0f} MB): "
              f"min {min(times):.3f} s, median {float(np.median(times)):.3f} s over {args.repeats} "
              f"(page cache warm after the first)")


if __name__ == "__main__":
    main()
