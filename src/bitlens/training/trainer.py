"""The training loop: Adam over any row source, periodic evaluation, JSONL metrics, resumable checkpoints.

The trainer never sees where rows come from (an array in memory, a file, the activation store) nor which coder it
trains: the objective comes from ``objectives.OBJECTIVES`` by the coder's architecture (the BAE's is its fused
fast step). Batches are row tensors, or (input, target) pairs for transcoders. Batch order is a pure function of
(seed, epoch), and the checkpoint holds the weights, Adam's state and the step, so a resumed run repeats an
uninterrupted one bit for bit. With a target FVU (``LossConfig.target_fvu``) the trainer also runs the dual-ascent
controller of ``dual.py``, whose state is part of the checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from ..coders.registry import load
from ..data.sources import RowSource
from ..devices import resolve_device
from ..io import BitlensError, json_safe
from .checkpoint import load_trainer_state, restore_optimizer, save_checkpoint
from .coder_init import data_variance, init_bae, init_coder  # noqa: F401  (init_*: re-exported)
from .config import TARGET_TOLERANCE, TrainConfig
from .distributed import World, current_world
from .dual import controller_for
from .feasible import BestFeasible
from .objectives import objective_for
from .optim import adam
from .schedules import cosine_tail
from .validation import Validation

CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"
REVIVALS = "revival.jsonl"


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so both write a checkpoint before exiting."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _targets(source: RowSource, limit: int) -> torch.Tensor:
    """Target rows of a source: its rows, or the aligned targets of a paired (transcoder) source."""
    return source.target_rows(limit) if hasattr(source, "target_rows") else source.rows(limit)


def _to(batch, device: torch.device):
    """The batch on ``device``; to a GPU from pinned memory, so the copy is asynchronous."""
    if isinstance(batch, (tuple, list)):
        return tuple(_to(b, device) for b in batch)
    if device.type == "cuda" and batch.device.type == "cpu":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def _nothing() -> None:
    pass


def _rows_in(batch) -> int:
    return (batch[0] if isinstance(batch, (tuple, list)) else batch).shape[0]


class Trainer(Validation):
    """Trains one coder; under torchrun (``world``, default: ``distributed.current_world``) every rank trains on
    its share of each global batch with exact global-batch statistics (see ``distributed.py``), and rank 0 alone
    evaluates, logs and writes checkpoints.

    A source whose rows are already split across ranks (``sharded = True``: on-the-fly activations, each rank
    running the LM on its own documents) serves this rank's share of every batch itself; one with ``stream_state``
    resumes from the per-rank positions kept in the checkpoint (``stream`` in trainer_state.json)."""

    def __init__(self, model: torch.nn.Module, train: RowSource, val: RowSource | None,
                 cfg: TrainConfig, loss: Any, out_dir: str | Path, variance: float | None = None,
                 world: World | None = None):
        if train.dim != model.d_in:
            raise BitlensError(f"data has dimension {train.dim} but the coder expects {model.d_in}")
        self.spec = objective_for(model.architecture)
        if not isinstance(loss, self.spec.loss_config):
            raise BitlensError(f"{model.architecture} trains with a {self.spec.loss_config.__name__}, "
                               f"not a {type(loss).__name__}")
        self.cfg, self.loss_cfg = cfg, loss
        self.world = world if world is not None else current_world(cfg.device)
        if self.world.active and self.spec.local_only:
            raise BitlensError(f"{model.architecture} has no data-parallel objective yet: train it in one process")
        self.device = torch.device(resolve_device(self.world.device(cfg.device)))
        self.model = model.to(self.device)
        self.train_rows, self.val_rows = train, val
        self.out_dir = Path(out_dir)
        self.sharded = bool(getattr(train, "sharded", False))
        rows = train.n_rows  # rows of the global data; a sharded source's ranks agree on the smallest share's
        if self.sharded:
            rows = int(min(r[0] for r in self.world.gather_floats([rows]))) * self.world.size
        self.batch_size = min(cfg.batch_size, rows)
        self.local_batch = self.world.check_batch(self.batch_size)
        self.steps_per_epoch = max(1, rows // self.batch_size)
        self.total_steps = (math.ceil(cfg.epochs * self.steps_per_epoch) if cfg.epochs > 0 else cfg.steps)
        self.opt = adam(self.model.parameters(), cfg.lr)
        self.step = 0
        self.variance = variance if variance is not None else data_variance(model, _targets(train, 65536))
        if self.world.active:  # one start for all ranks (a sharded source's init sample differs by rank)
            self.world.broadcast_tensors([*self.model.parameters(), *self.model.buffers()])
            self.variance = self.world.broadcast_float(self.variance)
        self._stream_states: list[list[float]] | None = None
        if hasattr(train, "stream_state"):  # every rank's source position, kept by rank 0 for its checkpoints
            self._stream_states = self.world.gather_floats(train.stream_state())
        self._running: dict[str, float] = {}
        self.controller = controller_for(loss, self.total_steps)
        self.feasible = (BestFeasible(self.controller.target + TARGET_TOLERANCE)
                         if self.controller is not None and getattr(loss, "keep_feasible", False) else None)
        self.restored: dict[str, Any] | None = None
        """Set when the run returned its best feasible evaluation instead of its last state (see fit)."""
        # only rank 0 may hold validation rows (training from a model): it decides for every rank whether to calibrate
        has_val = float(val is not None and val.n_rows > 0)
        self._calibrates = bool(self.controller is not None and self.controller.calibrate_every
                                and self.world.broadcast_float(has_val))
        self._revived = 0
        self._revive_rows: torch.Tensor | None = None
        self._val_cache: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._calibration_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._open_batches: tuple[int, Iterator] | None = None  # (step, this rank's batches from that step on)

    # ---- state -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        state = {"step": self.step, "total_steps": self.total_steps, "variance": self.variance,
                 "architecture": self.model.architecture,
                 "train_config": self.cfg.to_dict(), "loss_config": self.loss_cfg.to_dict()}
        if self.controller is not None:
            state["dual"] = self.controller.state()
        if self.feasible is not None and self.feasible.best is not None:
            state["best_feasible"] = self.feasible.state()
        if self._stream_states is not None:
            state["stream"] = self._stream_states
        return state

    def save(self) -> Path:
        """Write the checkpoint (rank 0 only; every rank holds the same weights and optimizer state)."""
        folder = self.out_dir / CHECKPOINT
        if self.world.main:
            save_checkpoint(folder, self.model, self.opt, self.state(),
                            also_write=self.feasible.save if self.feasible is not None else None)
        return folder

    #: fields a resumed run may change: where/how it reports, and how long it trains
    RESUMABLE_OVERRIDES = frozenset({"steps", "epochs", "progress", "device", "precision", "eval_every", "eval_tokens",
                                     "checkpoint_every"})

    @classmethod
    def resume(cls, out_dir: str | Path, train: RowSource, val: RowSource | None,
               overrides: dict[str, Any] | None = None, world: World | None = None) -> "Trainer":
        """Rebuild a trainer from ``out_dir/checkpoint``. With no ``overrides`` the run continues exactly as
        the uninterrupted one would; overriding ``steps``/``epochs`` extends (or shortens) it, which moves the
        LR schedule's tail and the default warm-up length from that point on."""
        folder = Path(out_dir) / CHECKPOINT
        if not (folder / "trainer_state.json").is_file():
            raise BitlensError(f"nothing to resume: no checkpoint in {folder}")
        state, opt_tensors = load_trainer_state(folder)
        model = load(folder)
        if train.dim != model.d_in:
            raise BitlensError(f"cannot resume: data has dimension {train.dim} but the checkpoint expects {model.d_in}")
        overrides = overrides or {}
        refused = sorted(set(overrides) - cls.RESUMABLE_OVERRIDES)
        if refused:
            raise BitlensError(f"cannot change {', '.join(refused)} when resuming (it would not be the same run)")
        state_file = folder / "trainer_state.json"
        if state["architecture"] != model.architecture:
            raise BitlensError(f"{state_file}: architecture {state['architecture']!r} but cfg.json says "
                               f"{model.architecture!r}")
        loss_cls = objective_for(model.architecture).loss_config
        try:
            saved_cfg = TrainConfig.from_dict(state["train_config"])
            saved_cfg = TrainConfig.from_dict({**saved_cfg.to_dict(), **overrides})
            loss_cfg = loss_cls.from_dict({**getattr(loss_cls, "LEGACY", {}), **state["loss_config"]})
        except (ValueError, TypeError) as e:
            raise BitlensError(f"{state_file}: {str(e).splitlines()[0]}") from None
        world = world if world is not None else current_world(saved_cfg.device)
        if hasattr(train, "stream_state"):  # before any collective: a wrong number of ranks fails on every rank
            cls._check_stream(state.get("stream"), state_file, world, out_dir)
        trainer = cls(model, train, val, saved_cfg, loss_cfg, out_dir, variance=state["variance"], world=world)
        try:
            restore_optimizer(trainer.opt, opt_tensors, state["optimizer"])
        except Exception as e:  # wrong keys or shapes: the optimizer state does not belong to this model
            raise BitlensError(f"{folder / 'optimizer.safetensors'}: does not fit the model "
                               f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        trainer.step = state["step"]
        if trainer.controller is not None and "dual" in state:
            try:
                trainer.controller.load(state["dual"])
            except (KeyError, TypeError, ValueError) as e:
                raise BitlensError(f"{state_file}: dual: not a target-FVU controller state ({e})") from None
        if trainer.feasible is not None:
            trainer.feasible.load(state.get("best_feasible"), folder, trainer.model)
        if hasattr(train, "stream_state"):
            train.load_stream_state(state["stream"][world.rank])
            trainer._stream_states = state["stream"]
        if trainer.world.main:
            trainer._truncate_metrics()
        return trainer

    @staticmethod
    def _check_stream(saved: Any, state_file: Path, world: World, out_dir: str | Path) -> None:
        """Each rank resumes its source from its position in the checkpoint; the split of the data across ranks
        depends on their number, so a run that streams per rank resumes only with as many ranks as it started."""
        if not isinstance(saved, list) or not all(isinstance(s, list) for s in saved):
            raise BitlensError(f"{state_file}: no stream positions (stream) to resume an on-the-fly run from")
        if len(saved) != world.size:
            raise BitlensError(f"{out_dir} streams activations on {len(saved)} process(es), one document shard "
                               f"each: resume it with {len(saved)} (not {world.size})")

    def _truncate_metrics(self) -> None:
        """Drop logged lines past the checkpoint's step so a resumed run does not duplicate them."""
        for path in (self.out_dir / METRICS, self.out_dir / REVIVALS):
            if not path.exists():
                continue
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= self.step]
            path.write_text("".join(ln + "\n" for ln in keep))

    # ---- loop --------------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[torch.Tensor]:
        """This rank's share of each global batch."""
        if self.sharded:  # the source serves this rank's rows itself
            yield from self.train_rows.stream(self.local_batch)
            return
        lo, hi = self.world.share(self.batch_size)
        for batch in self._global_batches():
            # every rank reads the same global batch (a pure function of seed and step, so any number of ranks
            # resumes any run) and keeps its own rows
            yield batch if not self.world.active else (
                tuple(b[lo:hi] for b in batch) if isinstance(batch, (tuple, list)) else batch[lo:hi])

    def _global_batches(self) -> Iterator[torch.Tensor]:
        epoch, offset = divmod(self.step, self.steps_per_epoch)
        while True:
            # only full batches, and exactly steps_per_epoch of them, so step -> (epoch, offset) stays exact
            # whatever a source does with its last partial batch
            batches = (b for b in self.train_rows.batches(self.batch_size, epoch, self.cfg.seed, start=offset)
                       if _rows_in(b) == self.batch_size)
            yield from itertools.islice(batches, self.steps_per_epoch - offset)
            epoch, offset = epoch + 1, 0

    def _lr(self) -> float:
        return self.cfg.lr * cosine_tail(self.step, self.total_steps, self.cfg.lr_decay, self.cfg.lr_final)

    def fit(self, until: int | None = None) -> dict[str, float]:
        """Train to ``total_steps`` (or stop early at step ``until``), then checkpoint; returns the last
        evaluation. On Ctrl-C/SIGTERM: checkpoint, then re-raise."""
        stop = self.total_steps if until is None else min(until, self.total_steps)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.step == 0 and self.world.main:  # a fresh start: lines of a run killed before its first checkpoint go
            (self.out_dir / METRICS).unlink(missing_ok=True)
        self.model.train()
        last: dict[str, float] = {}
        world_kw = {"world": self.world} if self.world.active and self.spec.global_batch else {}
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.cfg.progress and self.world.main),
                   desc="train", unit="step", dynamic_ncols=True)
        try:
            with _sigterm_as_interrupt():
                # a fit that continues where the last one stopped (fit(until=...) in segments) keeps its batch stream
                # rather than reopening it, which would re-read a shuffling-buffer group
                continuing = self._open_batches is not None and self._open_batches[0] == self.step
                batches = self._open_batches[1] if continuing else self._batches()
                self._open_batches = None
                objective = self.spec.objective
                while self.step < stop:
                    x = _to(next(batches), self.device)
                    for group in self.opt.param_groups:
                        group["lr"] = self._lr()
                    with torch.autocast(self.device.type, torch.bfloat16, enabled=self.cfg.precision == "bf16"):
                        terms = objective(self.model, x, self._step_loss(), self.variance, self.step,
                                          self.total_steps, **world_kw)
                    loss = float(terms.loss.detach())  # _accumulate syncs on every term anyway
                    if not math.isfinite(loss):
                        raise BitlensError(
                            f"training stopped: the loss became non-finite ({loss}) at step {self.step + 1}; the "
                            f"last checkpoint in {self.out_dir / CHECKPOINT} is kept (if any): lower --lr or check "
                            "the data")
                    self.opt.zero_grad(set_to_none=True)
                    terms.loss.backward()
                    # global-batch objectives: each rank's gradient is its rows' part of the sum; batch means: average
                    self.world.sum_gradients(self.model.parameters(), average=not world_kw)
                    # constraints of the coder around the step (unit-norm SAE decoder columns, coders/sae.py)
                    getattr(self.model, "before_optimizer_step", _nothing)()
                    self.opt.step()
                    getattr(self.model, "after_optimizer_step", _nothing)()
                    # every rank's stream position, for rank 0's checkpoint; gathered each step (a few floats) so
                    # that a checkpoint on Ctrl-C needs no collective while the ranks may be stopping
                    if hasattr(self.train_rows, "stream_state"):
                        self._stream_states = self.world.gather_floats(self.train_rows.stream_state())
                    if self.controller is not None:
                        self.controller.update(float(terms.recon.detach()), terms.entropy_weight > 0
                                               or terms.cov_weight > 0)
                    self.step += 1
                    self._maybe_calibrate()
                    self._maybe_revive()
                    bar.update(1)
                    self._accumulate(terms)
                    if self.step % self.cfg.eval_every == 0 or self.step == self.total_steps:
                        last = self.log()
                        bar.set_postfix(fvu=f"{last.get('val/fvu', float('nan')):.3f}",
                                        H=f"{last.get('val/entropy_bits', float('nan')):.1f}",
                                        L0=f"{last.get('val/l0', float('nan')):.1f}")
                    if self.step % self.cfg.checkpoint_every == 0 and self.step < self.total_steps:
                        self.save()
        except KeyboardInterrupt:
            bar.close()
            self.save()
            raise
        except BitlensError:
            bar.close()  # end the bar's line so the error starts on its own; no checkpoint of a diverged model
            raise
        bar.close()
        self._open_batches = (self.step, batches)
        if self.step == self.total_steps and self.world.main:
            last = self._return_feasible(last)
        self.save()
        self.model.eval()
        return last

    def _return_feasible(self, last: dict[str, Any]) -> dict[str, Any]:
        """The last evaluation; or, when it missed the target and an earlier one did not (``feasible.py``), that
        one's weights, re-evaluated. Runs once: a finished run that is resumed returns what it holds."""
        if self.feasible is None or self.restored is not None:
            return last
        stats = {k[len("val/"):]: v for k, v in last.items() if k.startswith("val/")} or self.evaluate()
        kept = self.feasible.settle(self.model, stats)
        if kept is None:
            return last
        self.restored = {"restored_step": kept.step, "last_step_fvu": stats.get("fvu"),
                         "last_step_entropy_bits": stats.get("entropy_bits")}
        logging.getLogger("bitlens").warning(
            "%s: the last step ended at held-out FVU %.4f (%.2f bits), above the target %.4f + %g; returning step "
            "%d instead (FVU %.4f, %.2f bits), the fewest bits within it", self.out_dir, stats.get("fvu", math.nan),
            stats.get("entropy_bits", math.nan), self.controller.target, TARGET_TOLERANCE, kept.step, kept.fvu,
            kept.entropy_bits)
        return {**last, **{f"val/{k}": v for k, v in self.evaluate().items()}}

    @property
    def revive_every(self) -> int:
        """Steps between unit revivals (0 = never); the config's -1 is a tenth of the training steps."""
        return max(1, self.total_steps // 10) if self.cfg.revive_every == -1 else self.cfg.revive_every

    def _maybe_revive(self) -> None:
        every = self.revive_every
        if (not every or self.model.architecture != "bae" or self.step % every
                or self.step > self.cfg.revive_until * self.total_steps):
            return
        from .revival import revive_units

        if self._revive_rows is None:
            self._revive_rows = self.train_rows.rows(self.cfg.revive_rows)
        rev = revive_units(self.model, self.opt, self._revive_rows, self.model.cfg.init_rate, self.step, self.cfg.seed)
        self._revived += len(rev.units)
        if self.world.active:  # rank 0's revival for all (a sharded source's sample differs by rank)
            moments = [t for st in self.opt.state.values() for k, t in st.items() if k in ("exp_avg", "exp_avg_sq")]
            self.world.broadcast_tensors([*self.model.parameters(), *moments])
        if self.world.main:
            with open(self.out_dir / REVIVALS, "a") as f:
                f.write(json.dumps(rev._asdict()) + "\n")

    def _step_loss(self) -> Any:
        """The loss config of this step: the configured one, or with a target FVU its weights times the multiplier."""
        if self.controller is None:
            return self.loss_cfg
        s = self.controller.scale
        return dataclasses.replace(self.loss_cfg, entropy_weight=self.loss_cfg.entropy_weight * s,
                                   cov_weight=self.loss_cfg.cov_weight * s)

    def _accumulate(self, terms) -> None:
        """Running sums of the tensor-valued loss terms (weights and other plain numbers are not logged); under
        torchrun the rank mean of objectives without global-batch terms (those with them agree on every rank)."""
        r = self._running
        r["n"] = r.get("n", 0) + 1
        named = {self.spec.log_names.get(k, k): v.detach() for k, v in terms._asdict().items()
                 if isinstance(v, torch.Tensor)}
        if self.world.active and not self.spec.global_batch and named:
            mean = self.world.sum(torch.stack([v.double().reshape(()) for v in named.values()])) / self.world.size
            named = dict(zip(named, mean))
        for name, value in named.items():
            r[name] = r.get(name, 0.0) + float(value)

    def log(self) -> dict[str, float]:
        r, self._running = self._running, {}
        if not self.world.main:  # rank 0 evaluates and logs for all
            return {}
        n = max(r.pop("n", 1), 1)
        record: dict[str, Any] = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "lr": self._lr()}
        record.update({f"train/{k}": v / n for k, v in r.items()})
        if self.revive_every and self.model.architecture == "bae":
            record["train/revived"], self._revived = self._revived, 0
        if self.controller is not None:  # the dual state after this step: running FVU, weight and lambda = 1/scale
            record["train/fvu_running"] = self.controller.fvu_running
            record["train/entropy_weight"] = self.loss_cfg.entropy_weight * self.controller.scale
            record["train/lambda"] = 1 / self.controller.scale
            if self.controller.calibrate_every:
                record["train/fvu_offset"] = self.controller.offset  # held-out minus running FVU
        stats = self.evaluate()
        record.update({f"val/{k}": v for k, v in stats.items()})
        if self.feasible is not None and self.controller.updates:  # only prices being paid: no warm-up evaluation
            self.feasible.offer(self.step, stats, self.model)
        with open(self.out_dir / METRICS, "a") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")  # an undefined statistic is null
        return record


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
