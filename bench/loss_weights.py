"""Sweep the scale_free entropy / covariance weights on real LLM states (the demo store by default).

Prints one row per (entropy_weight, cov_weight): FVU, cosine, entropy bits, L0, dead / constant-on / dense units,
so the trade-off (the paper's alpha knee) can be read off. Usage:

    python bench/loss_weights.py --store runs/demo/activations --layer 15 --steps 2000 \
        --weights 0.3:30,1:100,3:300 --out runs/bench/loss_weights
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bitlens.data.store import ActivationStore
from bitlens.training.config import LossConfig, TrainConfig
from bitlens.training.run import train_bae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="runs/demo/activations")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--weights", default="0.1:10,0.3:30,1:100,1:10,0.3:300,3:300",
                   help="comma-separated entropy:covariance weight pairs")
    p.add_argument("--out", default="runs/bench/loss_weights")
    a = p.parse_args()
    store = ActivationStore(a.store)
    train, val = store.split(0.1, 0, a.layer)
    rows = []
    for pair in a.weights.split(","):
        we, wc = (float(x) for x in pair.split(":"))
        t0 = time.perf_counter()
        cfg = TrainConfig(steps=a.steps, eval_every=a.steps, eval_tokens=25_000, checkpoint_every=a.steps,
                          progress=False)
        _, s = train_bae(train, val, Path(a.out) / f"e{we:g}_c{wc:g}", cfg=cfg,
                         loss=LossConfig(entropy_weight=we, cov_weight=wc))
        row = {"entropy_weight": we, "cov_weight": wc, "seconds": time.perf_counter() - t0,
               **{k: s[k] for k in ("fvu", "cosine", "entropy_bits", "l0", "dead", "constant_on", "dense")}}
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "sweep.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
