"""End to end, from the activation store to the optimiser step, against the bare fused step with Adam (issues 16, 18).

    python bench/train_e2e.py --store runs/demo/activations --layer 15 --json runs/bench/train_e2e.json
    BITLENS_OFFICIAL_BAE=/path/to/Binary_Autoencoder python bench/train_e2e.py --store ... (adds the official column)
    torchrun --nproc_per_node 8 bench/train_e2e.py --store STORE --layer L --device cuda --batch-size 4096

In one process, on the same rows and from the same initial weights, three loops are timed:

* **e2e**: ``Trainer.fit`` as ``bitlens train --store`` runs it: batches read from the memory-mapped shards through
  the shuffling buffer, the fused BAE step, Adam, the LR schedule and target-FVU controller, metrics, and the periodic
  evaluation on ``--eval-tokens`` held-out rows every ``--eval-every`` steps (the first evaluation also reads those
  rows from the store), plus the checkpoint ``fit`` writes at its end. Steps/s over the whole ``fit``.
* **step**: the bare fused step with the trainer's Adam (``training.optim.adam``): ``objective`` + ``backward`` +
  ``Adam.step`` over ``--bare-batches`` batches already in memory (the first batches of the same epoch, cycled),
  with the same loss weights per step (warm-up, controller). ``e2e_over_step`` = e2e steps/s / step steps/s (target >= 0.9).
* **official** (only when ``BITLENS_OFFICIAL_BAE`` names a checkout of github.com/hc495/Binary_Autoencoder; its code
  is loaded from there at run time, never copied): its ``BinarizedAutoencoder`` (d' = 4d, sign_s, bias, no output
  activation) and its objective (``self_regression_loss`` + entropy + ``covarience_of_binary_hidden``, weights 1e-7)
  in the loop body of its ``auto_encoder_trainer`` (DataLoader with shuffling over the same rows held in memory,
  Adam 1e-3, the per-step ``.item()`` reads; its wandb logging is left out), batch ``--batch-size``.
  ``speedup_vs_official`` = e2e steps/s / official steps/s.

Under torchrun the rates are of the global batch (all processes together), and the official column is skipped.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import itertools
import json
import math
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from bitlens.coders.bae import BAEConfig
from bitlens.data.store import ActivationStore
from bitlens.training.config import LossConfig, TrainConfig
from bitlens.training.distributed import current_world
from bitlens.training.dual import controller_for
from bitlens.training.objectives import objective_for
from bitlens.training.optim import adam
from bitlens.training.schedules import cosine_tail
from bitlens.training.trainer import Trainer, init_bae

OFFICIAL_ENV = "BITLENS_OFFICIAL_BAE"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed_evaluations(trainer: Trainer) -> list[float]:
    """Wrap ``trainer.evaluate`` so each call's seconds are recorded (the evaluation itself is unchanged)."""
    seconds: list[float] = []
    evaluate = trainer.evaluate

    def wrapper():
        started = time.perf_counter()
        out = evaluate()
        seconds.append(round(time.perf_counter() - started, 3))
        return out

    trainer.evaluate = wrapper
    return seconds


class BareLoop:
    """The bare fused step with Adam, resumable in segments: same LR schedule and loss weights as the trainer."""

    def __init__(self, model, batches: list[torch.Tensor], cfg: TrainConfig, loss: LossConfig, variance: float,
                 total: int, world):
        self.model, self.batches, self.cfg, self.loss, self.variance, self.total = \
            model, batches, cfg, loss, variance, total
        self.world = world
        self.objective = objective_for("bae").objective
        self.opt = adam(model.parameters(), cfg.lr)  # the trainer's optimiser
        self.controller = controller_for(loss, total)
        self.step = 0
        model.train()

    def run(self, until: int) -> None:
        import dataclasses

        cfg, loss, controller = self.cfg, self.loss, self.controller
        world_kw = {"world": self.world} if self.world.active else {}
        while self.step < until:
            x = self.batches[self.step % len(self.batches)]
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr * cosine_tail(self.step, self.total, cfg.lr_decay, cfg.lr_final)
            step_loss = loss if controller is None else dataclasses.replace(
                loss, entropy_weight=loss.entropy_weight * controller.scale,
                cov_weight=loss.cov_weight * controller.scale)
            with torch.autocast(x.device.type, torch.bfloat16, enabled=cfg.precision == "bf16"):
                terms = self.objective(self.model, x, step_loss, self.variance, self.step, self.total, **world_kw)
            self.opt.zero_grad(set_to_none=True)
            terms.loss.backward()
            self.world.sum_gradients(self.model.parameters(), average=not world_kw)
            self.opt.step()
            if controller is not None:
                controller.update(float(terms.recon.detach()), terms.entropy_weight > 0 or terms.cov_weight > 0)
            self.step += 1


def load_official(root: Path):
    """(module, objective) modules of the official checkout at ``root``, imported from there at run time."""
    if not (root / "module" / "binarized_autoencoder.py").is_file():
        raise SystemExit(f"{OFFICIAL_ENV}={root}: no module/binarized_autoencoder.py there (not a checkout of "
                         "hc495/Binary_Autoencoder)")
    package = types.ModuleType("_official_bae")
    package.__path__ = [str(root / "module")]  # its module/ folder has no __init__.py; binarized_autoencoder
    sys.modules["_official_bae"] = package      # imports its sibling with "from . import binarization"
    module = importlib.import_module("_official_bae.binarized_autoencoder")
    spec = importlib.util.spec_from_file_location("_official_bae_objective", root / "train" / "training_objective.py")
    objective = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(objective)
    return module, objective


def official_steps(root: Path, rows: torch.Tensor, batch_size: int, expansion: int, steps: int, warmup: int,
                   device: torch.device, sync) -> float:
    """Seconds for ``steps`` steps of the official training loop body (after ``warmup`` untimed ones)."""
    module, objective = load_official(root)
    torch.manual_seed(0)
    d = rows.shape[1]
    model = module.BinarizedAutoencoder(input_dim=d, hidden_dim=expansion * d, output_dim=d, bias=True,
                                        binarization_type="sign_s", output_activation="none").to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True, drop_last=True)
    entropy_weight = covariance_weight = 1e-7
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    started = None
    for i, batch in zip(range(warmup + steps), batches):
        if i == warmup:
            sync()
            started = time.perf_counter()
        opt.zero_grad()
        inputs = batch.to(device).to(next(model.parameters()).dtype)
        outputs, hidden = model(inputs)
        entropy = objective.entropy_of_binary_hidden(hidden, threshold=0)
        covariance = objective.covarience_of_binary_hidden(hidden)
        direct = objective.self_regression_loss(inputs, outputs)
        loss = direct + entropy_weight * entropy
        loss += covariance_weight * covariance
        loss.backward()
        opt.step()
        loss.item(), entropy.item(), covariance.item()  # its per-step logging reads these
    sync()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--steps", type=int, default=1000, help="steps of the e2e and the bare loop")
    ap.add_argument("--eval-every", type=int, default=500, help="TrainConfig.eval_every of the e2e run")
    ap.add_argument("--eval-tokens", type=int, default=65536, help="at most this many held-out rows per evaluation")
    ap.add_argument("--val-fraction", type=float, default=0.1,
                    help="documents held out, as `bitlens train --store` (0.25 of the demo store: 50k evaluation rows)")
    ap.add_argument("--batch-size", type=int, default=512, help="global rows per step")
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--bare-batches", type=int, default=32, help="batches held in memory for the bare loop")
    ap.add_argument("--segment", type=int, default=100,
                    help="the two loops alternate every this many steps (the machine is shared)")
    ap.add_argument("--official-steps", type=int, default=100)
    ap.add_argument("--official-rows", type=int, default=65536, help="training rows the official loop holds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--json", help="append the result here (rank 0)")
    args = ap.parse_args()

    world = current_world(args.device)
    store = ActivationStore(args.store)
    layer = store.default_layer(args.layer)
    train, val = store.split(args.val_fraction, 0, layer)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, eval_every=args.eval_every,
                      eval_tokens=args.eval_tokens, val_fraction=args.val_fraction, device=args.device,
                      precision=args.precision, progress=False)
    loss = LossConfig()
    load_start, started_at = load_average(), time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    model = init_bae(BAEConfig(d_in=store.dim, expansion=args.expansion), train.rows(65536), loss, cfg.seed)
    bare_model = copy.deepcopy(model)  # the same start for the bare loop
    # the bare loop: the same start, the first batches of epoch 0 (this rank's share), held in memory
    lo, hi = world.share(min(args.batch_size, train.n_rows))
    batches = [b[lo:hi] for b in itertools.islice(train.batches(min(args.batch_size, train.n_rows), 0, cfg.seed),
                                                  args.bare_batches)]
    segments = [min(args.steps, (i + 1) * args.segment) for i in range(math.ceil(args.steps / args.segment))]
    e2e = bare = 0.0
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, train, val, cfg, loss, out, world=world)
        device = trainer.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        bare_loop = BareLoop(bare_model.to(device), [b.to(device) for b in batches], cfg, loss, trainer.variance,
                             trainer.total_steps, world)
        evals = timed_evaluations(trainer)
        save = trainer.save
        for until in segments:  # interleaved, so background load hits both loops alike
            # fit() checkpoints whenever it returns; a real run does so only at its end
            trainer.save = save if until == segments[-1] else (lambda: None)
            sync()
            started = time.perf_counter()
            last = trainer.fit(until=until)
            sync()
            e2e += time.perf_counter() - started
            started = time.perf_counter()
            bare_loop.run(until)
            sync()
            bare += time.perf_counter() - started
    row = {"store": args.store, "layer": layer, "d": store.dim, "d_code": model.width, "device": str(device),
           "precision": args.precision, "processes": world.size, "batch_size": args.batch_size,
           "threads": torch.get_num_threads(), "steps": args.steps, "eval_every": args.eval_every,
           "eval_rows": int(min(args.eval_tokens, val.n_rows)), "train_rows": train.n_rows,
           "e2e_seconds": round(e2e, 2), "e2e_steps_per_s": round(args.steps / e2e, 3),
           "e2e_rows_per_s": round(args.steps * args.batch_size / e2e, 1),
           "evaluations": len(evals), "evaluation_seconds": evals,
           "step_seconds": round(bare, 2), "step_steps_per_s": round(args.steps / bare, 3),
           "e2e_over_step": round(bare / e2e, 3),
           "final_val": {k: round(v, 4) for k, v in last.items() if k in ("val/fvu", "val/l0", "val/entropy_bits")}}
    root = os.environ.get(OFFICIAL_ENV)
    if not root:
        print(f"official column skipped: set {OFFICIAL_ENV} to a checkout of github.com/hc495/Binary_Autoencoder",
              file=sys.stderr)
    elif world.active:
        print("official column skipped under torchrun (the official loop runs in one process)", file=sys.stderr)
    else:
        rows = train.rows(args.official_rows)
        seconds = official_steps(Path(root), rows, args.batch_size, args.expansion, args.official_steps, 5,
                                 device, sync)
        row.update(official_steps=args.official_steps, official_seconds=round(seconds, 2),
                   official_steps_per_s=round(args.official_steps / seconds, 3),
                   speedup_vs_official=round(args.steps / e2e / (args.official_steps / seconds), 2))
    row.update(started=started_at, load_average_start=load_start, load_average_end=load_average())
    if world.main:
        print(json.dumps(row))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
