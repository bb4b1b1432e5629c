"""Architecture registry and the on-disk coder format: a folder with ``cfg.json`` + ``model.safetensors``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .._version import __version__
from ..io import BitlensError, atomic_path, read_json_object, safetensors_header, write_json
from .bae import BAEConfig, BinaryAutoencoder
from .multibit import MultiBitAutoencoder, MultiBitConfig
from .random_control import RandomConfig, RandomControl
from .sae import JumpReLUSAE, ReLUSAE, SAEConfig, TopKSAE, Transcoder

#: architecture name -> (module class, config class)
REGISTRY: dict[str, tuple[type[torch.nn.Module], Any]] = {
    "bae": (BinaryAutoencoder, BAEConfig),
    "multibit_bae": (MultiBitAutoencoder, MultiBitConfig),  # ours: k bits per unit (coders/multibit.py)
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


def read_coder_config(folder: Path) -> tuple[str, Any]:
    """(architecture, config) from ``folder/cfg.json``, every field type-checked; BitlensError("<file>: ...")."""
    file = folder / "cfg.json"
    meta = read_json_object(file)
    arch = meta.get("architecture")
    if not isinstance(arch, str) or arch not in REGISTRY:
        raise BitlensError(f"{file}: architecture must be one of {', '.join(sorted(REGISTRY))}, not {arch!r}")
    if not isinstance(meta.get("config"), dict):
        raise BitlensError(f"{file}: config must be an object of settings, not {meta.get('config')!r}")
    try:
        return arch, REGISTRY[arch][1].from_dict(meta["config"])
    except (ValueError, TypeError) as e:
        raise BitlensError(f"{file}: {str(e).splitlines()[0]}") from None


def load(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a coder saved by bitlens from a checkpoint folder or a run folder. Never unpickles.

    Damaged files are refused with one line naming the file, before any large allocation: the model is first
    built on the meta device and its tensor shapes checked against the safetensors header (whose sizes are
    checked against the file's size), so a cfg.json claiming d_in = 40000 next to a 9 KB file costs nothing."""
    folder = find_checkpoint(path)
    arch, cfg = read_coder_config(folder)
    weights = folder / "model.safetensors"
    header = safetensors_header(weights)
    try:
        with torch.device("meta"):
            skeleton = build(arch, cfg)
    except (ValueError, TypeError, RuntimeError) as e:
        raise BitlensError(f"{folder / 'cfg.json'}: {str(e).splitlines()[0]}") from None
    expected = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    for name in sorted(set(expected) | set(header)):
        if expected.get(name) != (header[name][1] if name in header else None):
            have = header[name][1] if name in header else "absent"
            raise BitlensError(f"{folder / 'cfg.json'}: does not match {weights.name} ({weights.stat().st_size} "
                               f"bytes): {name} is {have} there, {expected.get(name, 'absent')} by this config")
    try:
        model = build(arch, cfg)
        model.load_state_dict(load_file(str(weights)))
    except Exception as e:  # safetensors and torch raise many kinds for damaged data
        raise BitlensError(f"{weights}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return model.to(device).eval()
