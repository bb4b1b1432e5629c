"""The superposed family's floor: a full-batch vs a minibatch fit of the threshold readout (``analysis.readout``).

``bitlens synth --family superposed`` states its target above the FVU of the best linear-threshold readout of the
true bits. Fitting it on every training row at every step costs rows x d x r per step: at d = 512 (r = 1024,
117,965 training rows) that ran for over 15 minutes on 2 cores. This bench fits the readout of synth's default code
at a given d both ways (each row of ``--variants`` is STEPSxBATCH, 0 = full batch) and prints the held-out floor
FVU, bit error, read bits and seconds of each, so the minibatch size synth uses (``READOUT_BATCH_ROWS``) is a
measured choice.

    python bench/readout_batch.py --dim 64 --variants 300x0,300x8192,1000x8192 --json runs/bench/readout_64.json
"""

from __future__ import annotations

import argparse
import json
import time

from bitlens.analysis.readout import threshold_readout
from bitlens.data.sources import split_rows
from bitlens.data.synthetic import planted_code
from bitlens.experiments.synth import DEFAULT_ROWS
from bitlens.io import write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--features", type=int, default=0, help="planted features r (0 = synth's default, 2 * dim)")
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS["superposed"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default="300x0,300x8192", help="STEPSxBATCH,... (BATCH 0 = every row per step)")
    p.add_argument("--json", default="")
    a = p.parse_args()
    r = a.features or 2 * a.dim
    code = planted_code("superposed", a.rows, a.dim, r, seed=a.seed + r)  # as synth draws it
    tr, va = split_rows(code.x, 0.1, a.seed)
    tr_codes, va_codes = split_rows(code.codes, 0.1, a.seed)
    rows = []
    for variant in a.variants.split(","):
        steps, batch = (int(v) for v in variant.split("x"))
        start = time.perf_counter()
        readout = threshold_readout(tr.rows(), tr_codes.rows(), steps=steps, seed=a.seed,
                                    held_out=(va.rows(), va_codes.rows()), batch_rows=batch)
        rows.append({"dim": a.dim, "features": r, "steps": steps, "batch_rows": batch, "floor_fvu": readout.fvu,
                     "bit_error": readout.bit_error, "read_bits": readout.bits, "true_bits": code.true_bits,
                     "seconds": time.perf_counter() - start})
        print(json.dumps(rows[-1]), flush=True)
    if a.json:
        write_json(a.json, {"rows": rows})


if __name__ == "__main__":
    main()
