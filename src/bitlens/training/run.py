"""One training run in a folder: checkpoint, metrics, curves, final statistics and manifest."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from tqdm.auto import tqdm

from ..analysis.entropy import bootstrap_bits
from ..coders.bae import BAEConfig, BinaryAutoencoder
from ..data.sources import RowSource
from ..io import BitlensError, check_out_dir, read_json_object, write_json, write_manifest
from .curves import plot_training_curves
from .config import TARGET_TOLERANCE, LossConfig, TrainConfig
from .trainer import CHECKPOINT, Trainer, read_metrics


RunState = Literal["new", "resume", "finished"]
SETTINGS_FILE = "run_settings.json"


def refuse_other_settings(run: str | Path, settings: dict[str, Any], what: str = "coder") -> None:
    """Raise one line if ``run`` records a training with other ``settings`` (JSON-able); fine if it records none.
    Options the library gained after the run was made are not counted (the run trained without them)."""
    run = Path(run)
    saved_file = run / SETTINGS_FILE
    if not saved_file.is_file():
        return
    settings = json.loads(json.dumps(settings, default=str))
    saved = read_json_object(saved_file)
    newer = _fields_added_since(saved, settings)
    if newer:
        logging.getLogger("bitlens").info("%s predates the options %s; resuming it as it was trained", run,
                                          ", ".join(newer))
    if saved != _without(settings, newer):
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        raise BitlensError(f"{run} holds a {what} trained with other settings ({', '.join(changed)}): "
                           "remove it or choose another output folder")


def resume_or_refuse(run: str | Path, settings: dict[str, Any], what: str = "coder") -> RunState:
    """What to do with the run folder ``run`` for a training described by ``settings`` (JSON-able).

    "finished": it holds this very training, done; "resume": it holds this training, interrupted after a
    checkpoint; "new": nothing to resume (a log left by a run killed before its first checkpoint is removed, so it is
    not appended to). A folder made with other settings is refused with one line. The settings are recorded in
    ``run/run_settings.json`` for the next call.
    """
    run = Path(run)
    settings = json.loads(json.dumps(settings, default=str))
    saved_file = run / SETTINGS_FILE
    refuse_other_settings(run, settings, what)
    state_file = run / CHECKPOINT / "trainer_state.json"
    if state_file.is_file():
        state = read_json_object(state_file)
        if (run / "final_metrics.json").is_file() and state.get("step", 0) >= state.get("total_steps", 1 << 62):
            return "finished"
        return "resume"
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").unlink(missing_ok=True)  # killed before its first checkpoint: start the log afresh
    write_json(saved_file, settings)
    return "new"


def _fields_added_since(saved: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """``section.field`` names in ``settings`` whose section ``saved`` has but whose field it lacks."""
    return [f"{k}.{f}" for k, v in settings.items() if isinstance(v, dict) and isinstance(saved.get(k), dict)
            for f in v if f not in saved[k]]


def _without(settings: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in settings.items()}
    for name in fields:
        section, field = name.split(".", 1)
        out[section].pop(field)
    return out


def train_bae(train: RowSource, val: RowSource | None, out_dir: str | Path, bae: BAEConfig | None = None,
              cfg: TrainConfig | None = None, loss: LossConfig | None = None, resume: bool = False,
              inputs: dict[str, Any] | None = None, resume_overrides: dict[str, Any] | None = None,
              allow_new_data: bool = False) -> tuple[BinaryAutoencoder, dict[str, Any]]:
    """Train (or resume) a BAE on ``train`` rows, evaluating on ``val``; everything goes to ``out_dir``.

    When resuming, the saved configs are used; ``resume_overrides`` may change the fields listed in
    ``Trainer.RESUMABLE_OVERRIDES`` (e.g. ``{"steps": 20000}`` to train longer).

    Returns the trained model (eval mode) and its final validation statistics.
    Raises KeyboardInterrupt after writing a checkpoint when interrupted.
    """
    from ..coders.multibit import MultiBitConfig

    architecture = "multibit_bae" if isinstance(bae, MultiBitConfig) else "bae"  # k > 1 bits per unit: ours
    return train_coder(architecture, train, val, out_dir, bae or BAEConfig(), cfg, loss or LossConfig(), resume=resume,
                       inputs=inputs, resume_overrides=resume_overrides, allow_new_data=allow_new_data)


def train_coder(architecture: str, train: RowSource, val: RowSource | None, out_dir: str | Path,
                coder: Any = None, cfg: TrainConfig | None = None, loss: Any = None, resume: bool = False,
                inputs: dict[str, Any] | None = None, resume_overrides: dict[str, Any] | None = None,
                prepare: Callable[[torch.nn.Module], None] | None = None,
                allow_new_data: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train (or resume) a coder of any registered ``architecture`` with the shared trainer, checkpoint format,
    metrics and save format. ``coder`` and ``loss`` default to the architecture's config classes' defaults.
    ``train``/``val`` may be paired sources (``PairedRows``: transcoder inputs and targets). ``prepare`` is called
    on a fresh model before training (e.g. the random control's ``match_rates``).

    ``inputs`` (provenance for the manifest) should carry the data's ``sha256``: a resumed run on data whose
    fingerprint the run has not seen is refused unless ``allow_new_data``; the manifest's ``inputs_seen`` lists
    every input with the step from which it was used.
    """
    from .coder_init import init_coder
    from .distributed import current_world
    from .objectives import default_coder_config, objective_for

    out_dir = check_out_dir(out_dir)
    spec = objective_for(architecture)
    cfg = cfg or TrainConfig()
    world = current_world(cfg.device)  # torchrun: every rank runs this; rank 0 alone writes files
    coder = coder if coder is not None else default_coder_config(architecture)
    loss = loss if loss is not None else spec.loss_config()
    if resume:
        trainer = Trainer.resume(out_dir, train, val, resume_overrides, world=world)  # checks files and dims first
        manifest, seen, new = _inputs_seen(out_dir, inputs)
        if new is not None and seen and not allow_new_data:
            last = seen[-1]
            raise BitlensError(f"{out_dir} was trained on {last.get('source')} (sha256 {str(last['sha256'])[:12]}); "
                               f"{new['source']} is other data (sha256 {new['sha256'][:12]}): allow new "
                               "data (--allow-new-data) to continue on it")
        if new is not None and manifest is not None and world.main:
            manifest["inputs_seen"] = seen + [{**new, "from_step": trainer.step}]
            write_json(out_dir / "manifest.json", manifest)
    else:
        if (out_dir / CHECKPOINT).exists():
            raise BitlensError(f"{out_dir} already holds a checkpoint: resume it, or train into a new folder")
        if train.dim <= 0:
            raise BitlensError("training data has no columns")
        targets = train.target_rows(65536) if hasattr(train, "target_rows") else None
        dims = {"d_in": train.dim}
        if targets is not None:
            dims["d_out"] = int(targets.shape[1])
        coder = dataclasses.replace(coder, **dims)
        model = init_coder(architecture, coder, train.rows(65536), loss, cfg.seed, targets)
        if prepare is not None:
            prepare(model)
        trainer = Trainer(model, train, val, cfg, loss, out_dir, world=world)
        out_dir.mkdir(parents=True, exist_ok=True)
        scales = {"input_scale": float(trainer.model.input_scale)}
        if hasattr(trainer.model, "output_scale"):
            scales["output_scale"] = float(trainer.model.output_scale)
        distributed = {"world_size": world.size, "batch_per_rank": trainer.local_batch,
                       "sharded_data": trainer.sharded} if world.active else None
        if world.main:
            write_manifest(out_dir, command="train", config={
            "architecture": architecture, ("bae" if architecture == "bae" else "coder"): trainer.model.cfg.to_dict(),
                "train": cfg.to_dict(), "loss": loss.to_dict(), **scales, "data_variance": trainer.variance,
                **({"distributed": distributed} if distributed else {}),
            }, seeds={"seed": cfg.seed}, inputs={**(inputs or {}), "train_rows": train.n_rows,
                                                  "val_rows": val.n_rows if val is not None else 0},
                extra={"inputs_seen": [{**_input_id(inputs), "from_step": 0}] if _input_id(inputs) else []})
    try:
        last = trainer.fit()
    finally:
        if world.main:
            plot_training_curves(read_metrics(out_dir), out_dir / "curves.png")
    if not world.main:  # rank 0 evaluates and writes; the others wait until its files are there
        world.barrier()
        return trainer.model.eval(), {"step": trainer.step}
    pruning = _prune(trainer, out_dir)
    # fit() evaluates at its last step; a resumed run that was already finished has not evaluated yet
    val = {k[len("val/"):]: v for k, v in last.items() if k.startswith("val/")} if pruning is None else {}
    val = val or trainer.evaluate()
    final = {"step": trainer.step, **val}
    rows = trainer.eval_rows()
    if rows is not None and getattr(trainer.model, "binary", False) and "entropy_bits" in final:
        final["entropy_bits_ci95"] = list(bootstrap_bits(encode_all(trainer.model, rows)))  # over held-out tokens
    if trainer.controller is not None:  # the operating point this run was trained to, next to the one it reached
        target = trainer.controller.target
        final.update(target_fvu=target, fvu_running=trainer.controller.fvu_running,
                     entropy_weight_final=trainer.loss_cfg.entropy_weight * trainer.controller.scale)
        fvu = final.get("fvu")
        if trainer.restored is not None:  # the last step missed the target; an earlier evaluation is returned
            final.update(trainer.restored)
        if pruning is not None:
            final.update(pruned=len(pruning.pruned), fvu_before_pruning=pruning.fvu_before,
                         bits_before_pruning=pruning.bits_before)
        # below the target after pruning, no unit can be dropped without passing it: the constraint is slack at
        # the smallest code found (a noise-free planted code sits at FVU 0, whatever the target above it)
        final["target_slack"] = pruning is not None and fvu is not None and fvu < target - TARGET_TOLERANCE
        final["target_reached"] = fvu is not None and (abs(fvu - target) <= TARGET_TOLERANCE or final["target_slack"])
        if not final["target_reached"] and fvu is not None:
            logging.getLogger("bitlens").warning(
                "%s ended at held-out FVU %.4f, not at its target %.4f (+-%g): its bits are not a measurement at "
                "the target; train longer, or pick a reachable target from the entropy-distortion curve",
                out_dir, fvu, trainer.controller.target, TARGET_TOLERANCE)
    write_json(out_dir / "final_metrics.json", final)
    world.barrier()
    return trainer.model.eval(), final


def _prune(trainer: Trainer, out_dir: Path):
    """Prune a BAE trained to a target (``prune.py``) on rank 0, save it and log ``pruning.json``; None if the run
    does not prune (no target, pruning off, or not a plain BAE)."""
    loss = trainer.loss_cfg
    if trainer.controller is None or not getattr(loss, "prune", False) or trainer.model.architecture != "bae":
        return None
    from .prune import prune_to_target

    check = trainer.eval_rows() if loss.prune_check == "validation" else None
    result = prune_to_target(trainer.model, trainer.train_rows.rows(loss.prune_rows), trainer.controller.target,
                             check_rows=check)
    trainer.save()
    write_json(out_dir / "pruning.json", result._asdict())
    log = logging.getLogger("bitlens")
    log.info("pruning to FVU %.3f (%.4f on the %d refitted training rows, after a gap of %.4f on %d %s rows): "
             "%d of %d active units dropped, %.1f -> %.1f bits; FVU %.4f -> refit %.4f -> %.4f (check rows: %.4f)%s",
             result.target_fvu, result.budget_fvu, result.rows, result.gap, result.check_rows, result.checked_on,
             len(result.pruned), result.active_before, result.bits_before, result.bits_after, result.fvu_before,
             result.fvu_refit, result.fvu_after, result.fvu_check_after,
             "" if result.refit_kept else "; the refit generalised worse and was undone (trained decoder kept)")
    return result


def _input_id(inputs: dict[str, Any] | None) -> dict[str, Any] | None:
    """What identifies a run's data: its fingerprint, where it came from, and which part of it was used."""
    if not inputs or not inputs.get("sha256"):
        return None
    source = inputs.get("store") or inputs.get("activations") or inputs.get("source") or "?"
    return {"sha256": inputs["sha256"], "source": source,
            **{k: inputs[k] for k in ("layer", "key") if inputs.get(k) is not None}}


def _inputs_seen(out_dir: Path, inputs: dict[str, Any] | None):
    """(manifest, inputs seen so far, this input if the run has not seen it). Runs written before inputs_seen
    existed count their manifest's one input."""
    current = _input_id(inputs)
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None, [], None
    if not isinstance(manifest, dict):
        return None, [], None
    seen = manifest.get("inputs_seen")
    if not isinstance(seen, list):
        first = _input_id(manifest.get("inputs") if isinstance(manifest.get("inputs"), dict) else None)
        seen = [{**first, "from_step": 0}] if first else []
    same = lambda a, b: all(a.get(k) == b.get(k) for k in ("sha256", "layer", "key"))  # noqa: E731
    if current is None or any(isinstance(s, dict) and same(s, current) for s in seen):
        return manifest, seen, None
    return manifest, seen, current


def encode_all(model: torch.nn.Module, rows: torch.Tensor, chunk: int = 8192, progress: bool = False) -> torch.Tensor:
    """Codes of rows [n, d] (no gradients): uint8 [n, d'] for binary coders (BAE bits), float32 activations
    [n, width] for the others."""
    device = next(model.parameters()).device
    dtype = torch.uint8 if getattr(model, "binary", False) else torch.float32
    with torch.no_grad():
        starts = tqdm(range(0, rows.shape[0], chunk), desc="encode", unit="chunk", disable=not progress, leave=False)
        return torch.cat([model.encode(rows[i:i + chunk].to(device)).to(dtype).cpu() for i in starts])
