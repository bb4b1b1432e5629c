"""Stability of the BAE entropy estimate at a stated target FVU (issue 12), on the demo store by default.

Trains, all at the same target FVU (default: the library's ``DEFAULT_TARGET_FVU``):
  * ``seeds`` BAEs of d' = 4d at ``steps`` steps (seeds 0, 1, ...): ``seed_cv`` = std / mean of their bits;
  * seed 0 at 2 x ``steps``: ``steps_rel_change`` = |bits(2 steps) - bits(steps)| / bits(steps);
  * seed 0 at d' = 8d: ``width_rel_change`` = |bits(8d) - bits(4d)| / bits(4d) (both at the target, so at the
    same achieved FVU up to the controller's tolerance, which is reported next to it);
and gives every estimate a 95% bootstrap interval over the held-out tokens. Targets: seed_cv <= 2%,
steps_rel_change <= 3%, width_rel_change <= 5%. Finished runs are read back, so an interrupted bench resumes; the
seed runs are named as `bitlens entropy rd` names them, so ``--out RD_DIR/fvu_0.200`` reuses an rd run's BAEs at
the same target and steps instead of training them again.

    python bench/entropy_stability.py --store runs/demo/activations --layer 15 --json runs/bench/stability.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bitlens.experiments.unit_bae import UnitTraining, fit_unit
from bitlens.coders.registry import load
from bitlens.data.store import ActivationStore
from bitlens.analysis.entropy import bootstrap_bits
from bitlens.io import write_json
from bitlens.training.config import DEFAULT_TARGET_FVU
from bitlens.training.run import encode_all


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="runs/demo/activations", help="activation store to train on (default: the demo's)")
    p.add_argument("--layer", type=int, default=15, help="stored layer to train on")
    p.add_argument("--target-fvu", type=float, default=DEFAULT_TARGET_FVU,
                   help="target FVU of every run (default: the library's default target, %(default)s)")
    p.add_argument("--steps", type=int, default=3000, help="training steps of the seed and width runs; steps2x "
                   "trains twice as many (default %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds at d' = 4d for seed_cv (default %(default)s)")
    p.add_argument("--eval-tokens", type=int, default=20000, help="held-out tokens the bits are measured on "
                   "(default %(default)s)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the held-out tokens for each "
                   "95%% interval (default %(default)s)")
    p.add_argument("--out", default="runs/bench/stability", help="folder of the runs; finished runs there are read "
                   "back, not trained again")
    p.add_argument("--json", default="runs/bench/stability.json", help="where the summary JSON is written")
    p.add_argument("--only", default="", help="train just this run (seed_N, steps2x or width8d) and exit, e.g. to "
                   "schedule the runs one by one on a shared machine; a final call without it reads them all back")
    p.add_argument("--skip", default="", help="comma-separated runs left out (steps2x, width8d), e.g. when time is "
                   "short; their change and bound are reported as null")
    a = p.parse_args()

    store = ActivationStore(a.store)
    train, val = store.split(0.1, 0, a.layer)
    eval_rows = val.rows(a.eval_tokens, seed=0)
    out = Path(a.out)

    def run(name: str, seed: int, steps: int, expansion: int) -> dict:
        started = time.perf_counter()
        how = UnitTraining(steps=steps, expansion=expansion, seed=seed, target_fvu=a.target_fvu)
        folder = out / name
        r = fit_unit(folder, train, val, how, {"": eval_rows}, inputs={"store": a.store, "layer": a.layer})
        lo, hi = bootstrap_bits(encode_all(load(folder / "checkpoint"), eval_rows), a.bootstrap, seed)
        row = {"name": name, "seed": seed, "steps": steps, "expansion": expansion, "fvu": r["fvu"],
               "entropy_bits": r["entropy_bits"], "entropy_bits_ci95": [lo, hi], "dead": r["dead"],
               "constant_on": r["constant_on"], "seconds": time.perf_counter() - started}
        print(f"{name:>10}: FVU {row['fvu']:.4f}  {row['entropy_bits']:.1f} bits [{lo:.1f}, {hi:.1f}]  "
              f"dead {row['dead']}  constant-on {row['constant_on']}", flush=True)
        return row

    plans = {**{f"seed_{s}": (s, a.steps, 4) for s in range(a.seeds)}, "steps2x": (0, 2 * a.steps, 4),
             "width8d": (0, a.steps, 8)}
    if a.only:
        if a.only not in plans:
            raise SystemExit(f"entropy_stability: error: --only takes one of {', '.join(plans)}")
        run(a.only, *plans[a.only])
        return
    skip = {name for name in a.skip.split(",") if name}
    if skip - {"steps2x", "width8d"}:
        raise SystemExit("entropy_stability: error: --skip takes steps2x and/or width8d")
    seeds = [run(f"seed_{s}", s, a.steps, 4) for s in range(a.seeds)]
    longer = None if "steps2x" in skip else run("steps2x", 0, 2 * a.steps, 4)
    wider = None if "width8d" in skip else run("width8d", 0, a.steps, 8)
    bits = np.array([r["entropy_bits"] for r in seeds])
    base = seeds[0]["entropy_bits"]
    summary = {
        "store": a.store, "layer": a.layer, "target_fvu": a.target_fvu, "steps": a.steps,
        "seed_cv": float(bits.std(ddof=1) / bits.mean()) if len(bits) > 1 else None,
        "steps_rel_change": abs(longer["entropy_bits"] - base) / base if longer else None,
        "width_rel_change": abs(wider["entropy_bits"] - base) / base if wider else None,
        "bounds": {"seed_cv": 0.02, "steps_rel_change": 0.03, "width_rel_change": 0.05},
        "runs": seeds + [r for r in (longer, wider) if r],
    }
    summary["within_bounds"] = {k: None if summary[k] is None else summary[k] <= v
                                for k, v in summary["bounds"].items()}
    write_json(a.json, summary)
    print(json.dumps({k: summary[k] for k in ("seed_cv", "steps_rel_change", "width_rel_change", "within_bounds")}))


if __name__ == "__main__":
    main()
