"""Device names: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the first GPU when torch sees one, else the CPU)."""

from __future__ import annotations

from .io import BitlensError


def resolve_device(name: str) -> str:
    """The torch device string for ``name``; refuses a GPU that is not there with one clear line."""
    import torch

    name = (name or "cpu").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BitlensError(f"device {name!r} requested but torch sees no CUDA GPU (use cpu or auto)")
    try:
        torch.device(name)
    except RuntimeError:
        raise BitlensError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    return name
