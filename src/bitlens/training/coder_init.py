"""A coder's starting point for training: seeded weights, input (and output) scales fitted to a data sample, the
decoder bias at the (normalised) data mean; and the data variance that normalises the scale_free reconstruction term.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..coders.bae import BAEConfig, BinaryAutoencoder
from ..coders.registry import build
from ..coders.sae import SAEConfig, TopKSAE
from .config import LossConfig


def init_bae(cfg: BAEConfig, sample: torch.Tensor, loss: LossConfig, seed: int,
             architecture: str = "bae") -> BinaryAutoencoder:
    """A fresh BAE for rows like ``sample`` [n, d]: seeded init; for scale_free also the input scale and a
    decoder bias at the (normalised) data mean, so training starts from the mean predictor's error; with
    ``cfg.init`` sparse the sparse start (``BinaryAutoencoder.sparse_start``), with topk also ``topk_start``
    (``auto`` is resolved by ``BAEConfig.start``). ``architecture``
    multibit_bae: the same start for a multi-bit autoencoder (``cfg`` a ``MultiBitConfig``)."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(cfg, init=cfg.start)  # the model's cfg.json names the start it had
    model = BinaryAutoencoder(cfg) if architecture == "bae" else build(architecture, cfg)
    if loss.preset == "scale_free":
        model.fit_input_scale(sample)
        with torch.no_grad():
            model.decoder.bias.copy_((sample / model.input_scale).mean(0))
    if cfg.init in ("sparse", "topk"):  # topk leaves the units its SAE does not use at the sparse start
        model.sparse_start(sample, cfg.init_rate)
    if cfg.init == "topk":
        topk_start(model, sample, cfg.init_rate, cfg.init_steps, seed)
    return model


TOPK_START_BATCH = 512


def binary_cut(pre: torch.Tensor, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best one-bit code of each latent's activation that a threshold on its pre-activation can give.

    Args: pre [n, m] pre-activations; acts [n, m] the activations to code (non-negative: a TopK SAE's, zero
    where the latent was not selected). Returns threshold [m], level [m], used [m] (ever non-zero): coding
    column j as level_j where pre_j > threshold_j and 0 elsewhere has the least squared error of any such code.

    Why the pre-activation: a BAE unit fires wherever its pre-activation passes the threshold, with no TopK
    competition, so the cut must be chosen in that order. Firing on the top t rows by pre_j, the best level is
    the mean activation there, which leaves sum(a^2) - S_t^2 / t (S_t: the activations summed over those rows);
    t maximises S_t^2 / t, found exactly from the sorted column; the threshold sits midway to the next row.
    """
    order = pre.argsort(dim=0, descending=True)
    ranked = pre.gather(0, order)
    sums = acts.gather(0, order).double().cumsum(0)
    count = torch.arange(1, pre.shape[0] + 1, dtype=torch.float64)[:, None]
    best = (sums.pow(2) / count).argmax(0)  # [m]: rows firing - 1
    level = sums.gather(0, best[None]).squeeze(0) / (best + 1)
    below = ranked.gather(0, (best + 1).clamp_max(pre.shape[0] - 1)[None]).squeeze(0)
    at = ranked.gather(0, best[None]).squeeze(0)
    threshold = torch.where(best + 1 < pre.shape[0], (at + below) / 2, at - 1e-6 * at.abs().clamp_min(1))
    return threshold, level.float(), (acts > 0).any(0)


@torch.no_grad()
def topk_start(model: BinaryAutoencoder, sample: torch.Tensor, rate: float, steps: int, seed: int) -> int:
    """Aim the BAE's units at the features of a TopK SAE fitted to ``sample`` [n, d] (raw rows); returns how many.

    Why: from a random start the binary code's surrogate gradient does not find features in superposition (rare
    features outnumbering the dimensions, as in LLM states): on ``synth --family superposed`` every start of
    earlier sessions ended at ~10x the true bits at 3-6x the reachable FVU, while a TopK SAE, whose gradient
    carries each latent's magnitude, recovers the feature directions within a few hundred steps.

    The SAE (k = ``rate`` * d' latents per row, unit-norm decoder, encoder reading x/s - b_dec) is trained for
    ``steps`` Adam steps on the normalised sample. Each latent that fires on the sample becomes one unit: the
    latent's encoder row and decoder direction, cut where one bit codes its activations best (``binary_cut``:
    the threshold on its pre-activation and the decoder length); the decoder bias becomes the SAE's. Units whose
    latent never fires keep the sparse start. The model's input scale must already be fitted.
    """
    width, dim = model.encoder.weight.shape
    scale = float(model.input_scale)
    xn = sample.float() / scale
    sae = TopKSAE(SAEConfig(d_in=dim, d_code=width, k=max(1, round(rate * width)), aux_k=0))
    sae.decoder.bias.copy_(xn.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    batch = min(TOPK_START_BATCH, xn.shape[0])
    with torch.enable_grad():
        for _ in range(steps):
            rows = xn[torch.randint(0, xn.shape[0], (batch,), generator=g)]
            loss = (sae(rows).reconstruction - rows).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.before_optimizer_step()
            opt.step()
            sae.after_optimizer_step()
    pre = sae.pre_activation(xn[:16384])
    threshold, level, used = binary_cut(pre, sae.activate(pre))
    # the SAE's pre-activation is W (x/s - b_dec) + c; the BAE reads W x/s + b: fold -W b_dec into b
    bias = sae.encoder.bias - sae.encoder.weight @ sae.decoder.bias - threshold
    model.encoder.weight[used] = sae.encoder.weight[used]
    if model.encoder.bias is not None:
        model.encoder.bias[used] = bias[used]
    model.decoder.weight[:, used] = sae.decoder.weight[:, used] * level[used]
    model.decoder.bias.copy_(sae.decoder.bias)
    return int(used.sum())


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
