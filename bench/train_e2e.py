"""End-to-end BAE training throughput: rows/s from the activation store to the optimiser step (issue 16).

What is timed: ``Trainer.fit`` over ``--steps`` steps after ``--warmup`` untimed ones, i.e. batches read from the
memory-mapped store and shuffled, moved to the device (from pinned memory on CUDA), the fast BAE step, the gradient
all-reduce under torchrun, and Adam; the checkpoint fit() writes at its end is included, evaluation is not
(``eval_every`` beyond the run). Under torchrun the rate is of the global batch (all processes together):

    python bench/train_e2e.py --store runs/demo/activations --layer 15 --device cuda --precision bf16
    torchrun --nproc_per_node 8 bench/train_e2e.py --store STORE --layer L --device cuda --batch-size 4096
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from bitlens.coders.bae import BAEConfig
from bitlens.data.store import ActivationStore
from bitlens.training.config import LossConfig, TrainConfig
from bitlens.training.distributed import current_world
from bitlens.training.trainer import Trainer, init_bae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=20,
                    help="untimed steps first: right after the sparse start the sparse covariance path is slowest")
    ap.add_argument("--batch-size", type=int, default=512, help="global rows per step")
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--json", help="append the result here (rank 0)")
    args = ap.parse_args()

    world = current_world(args.device)
    store = ActivationStore(args.store)
    layer = store.default_layer(args.layer)
    train, _ = store.split(0.1, 0, layer)
    total = args.warmup + args.steps
    cfg = TrainConfig(steps=total, batch_size=args.batch_size, eval_every=10 * total, checkpoint_every=10 * total,
                      device=args.device, precision=args.precision, progress=False)
    loss = LossConfig()
    model = init_bae(BAEConfig(d_in=store.dim, expansion=args.expansion), train.rows(65536), loss, cfg.seed)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, train, None, cfg, loss, out, world=world)
        trainer.fit(until=args.warmup)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        sync()
        started = time.perf_counter()
        trainer.fit(until=total)
        sync()
        seconds = time.perf_counter() - started
    row = {"store": args.store, "layer": layer, "d": store.dim, "d_code": model.width, "device": str(trainer.device),
           "precision": args.precision, "processes": world.size, "batch_size": args.batch_size,
           "steps": args.steps, "seconds": round(seconds, 3), "steps_per_s": round(args.steps / seconds, 2),
           "rows_per_s": round(args.steps * args.batch_size / seconds, 1), "threads": torch.get_num_threads()}
    if world.main:
        print(json.dumps(row))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
