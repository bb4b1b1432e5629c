"""Is the superposed planted code a resting point of the BAE objective, or only out of the optimiser's reach?

`bitlens synth --family superposed` (r = 128 rare features in d = 64) ends near FVU 0.1 with ~10x the true bits,
while the best linear-threshold readout of the true bits (``analysis.readout``, the BAE's own function class)
reaches FVU ~0.01 at the true entropy. This probe trains two BAEs with synth's settings on the same data:

* ``fresh``: the library's start (sparse start);
* ``readout``: the first r units start as the readout (encoder rows and thresholds, least-squares decoder), the
  other d' - r units off;

both to the synth target (readout floor + SYNTH_TARGET_FVU). If the readout start keeps its bits and FVU, the
objective accepts the true code and the failure is the optimiser's start; if it drifts to the fresh run's code,
the objective itself prefers that code.

    python bench/superposed_probe.py --steps 2000 --json runs/bench/superposed_probe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from bitlens.analysis.entropy import estimate_entropy
from bitlens.analysis.readout import threshold_readout
from bitlens.coders.bae import BAEConfig
from bitlens.data.sources import split_rows
from bitlens.data.synthetic import planted_code
from bitlens.io import write_json
from bitlens.training.config import SYNTH_TARGET_FVU, TrainConfig, synth_loss
from bitlens.training.run import encode_all, train_coder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--rows", type=int, default=16384)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--entropy-weight", type=float, default=-1.0,
                   help="starting entropy weight (covariance weight 100x it); -1 = synth's start")
    p.add_argument("--out", default="runs/bench/superposed_probe")
    p.add_argument("--json", default="runs/bench/superposed_probe.json")
    p.add_argument("--starts", default="readout,fresh", help="which starts to train, comma-separated")
    a = p.parse_args()

    code = planted_code("superposed", a.rows, a.dim, a.features, seed=a.seed + a.features)
    tr, va = split_rows(code.x, 0.1, a.seed)
    tr_codes, _ = split_rows(code.codes, 0.1, a.seed)
    readout = threshold_readout(tr.rows(), tr_codes.rows(), seed=a.seed)
    target = readout.fvu + SYNTH_TARGET_FVU
    print(f"truth {code.true_bits:.2f} bits; readout: FVU {readout.fvu:.4f}, {readout.bits:.2f} bits, "
          f"bit error {readout.bit_error:.5f}; target {target:.4f}", flush=True)

    def from_readout(model) -> None:
        r, s = a.features, float(model.input_scale)
        with torch.no_grad():
            model.encoder.weight.zero_()
            model.encoder.bias.fill_(-1.0)  # units beyond r never fire at the start (pre-activation -1)
            model.encoder.weight[:r] = readout.weight * s  # the model reads x / s
            model.encoder.bias[:r] = readout.bias
            model.decoder.weight.zero_()
            model.decoder.weight[:, :r] = readout.decoder / s  # ... and decodes to x / s
            model.decoder.bias.copy_(readout.decoder_bias / s)

    rows = {"truth_bits": code.true_bits, "readout_fvu": readout.fvu, "readout_bits": readout.bits,
            "readout_bit_error": readout.bit_error, "target_fvu": target, "steps": a.steps, "runs": []}
    starts = {"readout": from_readout, "fresh": None}
    for name in a.starts.split(","):
        prepare = starts[name]
        started = time.perf_counter()
        cfg = TrainConfig(steps=a.steps, seed=a.seed, lr=a.lr, progress=False, eval_every=max(1, a.steps // 4))
        loss = synth_loss(target)
        if a.entropy_weight >= 0:
            loss = dataclasses.replace(loss, entropy_weight=a.entropy_weight, cov_weight=100 * a.entropy_weight)
        model, stats = train_coder("bae", tr, va, Path(a.out) / name, BAEConfig(), cfg, loss, prepare=prepare)
        est = estimate_entropy(encode_all(model, va.rows()))
        run = {"start": name, "fvu": stats["fvu"], "entropy_bits": est.marginal_bits, "l0": stats["l0"],
               "dead": stats["dead"], "seconds": time.perf_counter() - started}
        print(f"{name:>8}: FVU {run['fvu']:.4f}, {run['entropy_bits']:.2f} bits, L0 {run['l0']:.1f}, "
              f"dead {run['dead']}", flush=True)
        rows["runs"].append(run)
    write_json(a.json, rows)
    print(json.dumps({r["start"]: (round(r["fvu"], 4), round(r["entropy_bits"], 2)) for r in rows["runs"]}))


if __name__ == "__main__":
    main()
