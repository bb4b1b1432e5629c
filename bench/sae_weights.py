"""Calibrate the SAE baselines' default sparsity weights on a store: short runs, L0 and FVU per weight.

    python bench/sae_weights.py --store /work/main/runs/demo/activations --layer 15 --steps 800

Prints one line per (architecture, weight) and the training speed in steps/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from bitlens.data.store import ActivationStore
from bitlens.training.config import TrainConfig
from bitlens.training.run import train_coder
from bitlens.training.sae_objective import SparsityConfig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--runs", default="relu_sae:0.1,relu_sae:0.3,jumprelu_sae:0.0003,jumprelu_sae:0.002",
                   help="comma-separated architecture:weight pairs")
    args = p.parse_args()
    store = ActivationStore(args.store)
    tr, va = store.split(0.1, 0, store.default_layer(args.layer))
    rows = []
    for item in args.runs.split(","):
        arch, weight = item.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            _, st = train_coder(arch, tr, va, tmp, cfg=TrainConfig(steps=args.steps, eval_every=args.steps,
                                                                   eval_tokens=8192, progress=False),
                                loss=SparsityConfig(weight=float(weight)))
            dt = time.perf_counter() - t
        row = {"arch": arch, "weight": float(weight), "fvu": st["fvu"], "l0": st["l0"], "dead": st["dead"],
               "dense": st["dense"], "steps_per_s": args.steps / dt}
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
