"""Resumable checkpoints: coder files plus the trainer's state (optimizer tensors in safetensors, the rest JSON)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from ..coders.registry import save_coder
from ..io import BitlensError, atomic_dir, load_safetensors, read_json_object, write_json


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat tensors (for safetensors) and JSON-able metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    # the moments were saved contiguous; give them their parameter's layout again (the BAE's decoder weight is
    # column-major). The default Adam does not care, but torch's fused kernel pairs elements by memory position,
    # so a moment laid out unlike its parameter updates the wrong entries
    for param, param_state in opt.state.items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                param_state[name] = torch.empty_like(param).copy_(value)


def save_checkpoint(folder: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], also_write: Callable[[Path], None] | None = None) -> None:
    """Write the whole checkpoint folder atomically (it replaces the previous one only when complete);
    ``also_write(folder)`` adds the trainer's other files (the kept best feasible weights)."""
    with atomic_dir(folder) as tmp:
        save_coder(model, tmp)
        if also_write is not None:
            also_write(tmp)
        tensors, meta = optimizer_tensors(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "trainer_state.json", {**trainer_state, "optimizer": meta})


#: trainer_state.json fields and the JSON types they must have
_STATE_FIELDS = {"step": int, "total_steps": int, "variance": (int, float), "architecture": str,
                 "train_config": dict, "loss_config": dict, "optimizer": dict}
#: fields only some runs have: the target-FVU controller's state (dual ascent) and its best feasible evaluation
#: (``feasible.py``); the per-rank positions of a source that streams activations from a model (one list of numbers
#: per rank)
_OPTIONAL_FIELDS = {"dual": dict, "best_feasible": dict, "stream": list}


def load_trainer_state(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The trainer's state and the optimizer's tensors, checked: a damaged, truncated or edited file raises
    BitlensError("<file>: <what is wrong>") and nothing is changed."""
    folder = Path(folder)
    file = folder / "trainer_state.json"
    state = read_json_object(file)
    unknown = sorted(set(state) - set(_STATE_FIELDS) - set(_OPTIONAL_FIELDS))
    missing = sorted(set(_STATE_FIELDS) - set(state))
    if unknown or missing:
        raise BitlensError(f"{file}: " + "; ".join(
            ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
            + ([f"missing field(s) {', '.join(missing)}"] if missing else [])))
    for name, kind in [*_STATE_FIELDS.items(), *((k, t) for k, t in _OPTIONAL_FIELDS.items() if k in state)]:
        value = state[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BitlensError(f"{file}: {name} has the wrong type ({type(value).__name__})")
    if state["step"] < 0 or not (math.isfinite(state["variance"]) and state["variance"] > 0):
        raise BitlensError(f"{file}: step must be >= 0 and variance a positive number")
    opt = state["optimizer"]
    if not isinstance(opt.get("param_groups"), list) or not isinstance(opt.get("scalars"), dict):
        raise BitlensError(f"{file}: optimizer must hold param_groups (a list) and scalars (an object)")
    return state, load_safetensors(folder / "optimizer.safetensors")
