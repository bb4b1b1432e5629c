"""A coder's starting point for training: seeded weights, input (and output) scales fitted to a data sample, the
decoder bias at the (normalised) data mean; and the data variance that normalises the scale_free reconstruction term.
"""

from __future__ import annotations

from typing import Any

import torch

from ..coders.bae import BAEConfig, BinaryAutoencoder
from ..coders.registry import build
from .config import LossConfig


def init_bae(cfg: BAEConfig, sample: torch.Tensor, loss: LossConfig, seed: int,
             architecture: str = "bae") -> BinaryAutoencoder:
    """A fresh BAE for rows like ``sample`` [n, d]: seeded init; for scale_free also the input scale and a
    decoder bias at the (normalised) data mean, so training starts from the mean predictor's error; with
    ``cfg.init == "sparse"`` the sparse start (``BinaryAutoencoder.sparse_start``). ``architecture``
    multibit_bae: the same start for a multi-bit autoencoder (``cfg`` a ``MultiBitConfig``)."""
    torch.manual_seed(seed)
    model = BinaryAutoencoder(cfg) if architecture == "bae" else build(architecture, cfg)
    if loss.preset == "scale_free":
        model.fit_input_scale(sample)
        with torch.no_grad():
            model.decoder.bias.copy_((sample / model.input_scale).mean(0))
    if cfg.init == "sparse":
        model.sparse_start(sample, cfg.init_rate)
    return model


def init_coder(architecture: str, cfg: Any, sample: torch.Tensor, loss: Any, seed: int,
               target_sample: torch.Tensor | None = None) -> torch.nn.Module:
    """A fresh coder for rows like ``sample`` [n, d] (and targets like ``target_sample``): seeded init, input
    (and output) scale fitted, decoder bias at the normalised target mean. ``cfg.d_in`` (and ``d_out``) must be set.
    The random control's thresholds still need ``match_rates``."""
    if architecture in ("bae", "multibit_bae"):
        return init_bae(cfg, sample, loss, seed, architecture)
    torch.manual_seed(seed)
    model = build(architecture, cfg)
    if hasattr(model, "fit_scales"):
        model.fit_scales(sample, target_sample)
    with torch.no_grad():
        target = target_sample if target_sample is not None else sample
        scale = getattr(model, "output_scale", model.input_scale)
        model.decoder.bias.copy_((target / scale).mean(0))
    return model


def data_variance(model: torch.nn.Module, sample: torch.Tensor) -> float:
    """E||y/s - mean||^2 of the normalised (target) sample: the denominator of the scale_free reconstruction
    term; s is the coder's output scale (its input scale when it has none: target = input)."""
    xn = sample.double() / float(getattr(model, "output_scale", model.input_scale))
    return float((xn - xn.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12))
