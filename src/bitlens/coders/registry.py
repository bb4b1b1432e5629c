"""Architecture registry and the on-disk coder format: a folder with ``cfg.json`` + ``model.safetensors``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .._version import __version__
from ..io import BitlensError, atomic_path, write_json
from .bae import BAEConfig, BinaryAutoencoder
from .random_control import RandomConfig, RandomControl
from .sae import JumpReLUSAE, ReLUSAE, SAEConfig, TopKSAE, Transcoder

#: architecture name -> (module class, config class)
REGISTRY: dict[str, tuple[type[torch.nn.Module], Any]] = {
    "bae": (BinaryAutoencoder, BAEConfig),
    "relu_sae": (ReLUSAE, SAEConfig),
    "topk_sae": (TopKSAE, SAEConfig),
    "jumprelu_sae": (JumpReLUSAE, SAEConfig),
    "transcoder": (Transcoder, SAEConfig),
    "random": (RandomControl, RandomConfig),
}


def register(name: str, module_cls: type[torch.nn.Module], config_cls: Any) -> None:
    """Add an architecture so checkpoints naming it can be loaded."""
    REGISTRY[name] = (module_cls, config_cls)


def build(architecture: str, cfg: Any) -> torch.nn.Module:
    if architecture not in REGISTRY:
        raise BitlensError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[architecture][0](cfg)


def save_coder(model: torch.nn.Module, folder: str | Path) -> None:
    """Write ``cfg.json`` and ``model.safetensors`` into ``folder`` (each file atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(folder / "cfg.json", {
        "architecture": model.architecture,
        "config": model.cfg.to_dict(),
        "bitlens_version": __version__,
    })


def find_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder holding ``checkpoint/``; return the checkpoint folder."""
    path = Path(path)
    for candidate in (path, path / "checkpoint"):
        if (candidate / "cfg.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise BitlensError(f"no coder checkpoint (cfg.json + model.safetensors) at {path}")


def load(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a coder saved by bitlens from a checkpoint folder or a run folder. Never unpickles."""
    folder = find_checkpoint(path)
    try:
        meta = json.loads((folder / "cfg.json").read_text())
        arch = meta["architecture"]
        cfg_cls = REGISTRY[arch][1] if arch in REGISTRY else None
        if cfg_cls is None:
            raise BitlensError(f"unknown architecture {arch!r} in {folder / 'cfg.json'}")
        model = build(arch, cfg_cls.from_dict(meta["config"]))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    except (KeyError, ValueError, json.JSONDecodeError, RuntimeError) as e:
        raise BitlensError(f"cannot load coder from {folder}: {str(e).splitlines()[0]}") from e
    return model.to(device).eval()
