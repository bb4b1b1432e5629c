"""Feature activations of a coder over every token of a store, in streaming chunks.

A feature *fires* on a token when its activation is > 0 (BAE bits are 0/1; SAE latents are >= 0). The
minority state is ON when the firing rate p <= 0.5 and OFF otherwise (a usually-on unit's rare event is being off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.store import ActivationStore


@dataclass
class CoderScan:
    binary: bool
    width: int
    n_tokens: int
    rate: np.ndarray  # [width] firing rate p
    mean: np.ndarray  # [width] mean activation
    std: np.ndarray  # [width] standard deviation of the activation


def _chunks(store: ActivationStore, layer: int, chunk: int) -> Iterator[torch.Tensor]:
    for array in store.layer_shards(layer):
        for lo in range(0, len(array), chunk):
            yield torch.from_numpy(np.array(array[lo:lo + chunk], dtype=np.float32))


@torch.no_grad()
def _encode(coder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    device = next(coder.parameters()).device
    return coder.encode(x.to(device)).float().cpu()


def scan(coder, store: ActivationStore, layer: int, chunk: int = 8192, progress: bool = True) -> CoderScan:
    """Firing rates, means and standard deviations of every feature over all store tokens (one pass)."""
    width = int(coder.width)
    fires = torch.zeros(width, dtype=torch.float64)
    total = torch.zeros(width, dtype=torch.float64)
    total_sq = torch.zeros(width, dtype=torch.float64)
    n = 0
    for x in tqdm(_chunks(store, layer, chunk), total=-(-store.n_tokens // chunk), desc="encode (statistics)",
                  disable=not progress, leave=False):
        a = _encode(coder, x).double()
        fires += (a > 0).sum(0)
        total += a.sum(0)
        total_sq += (a * a).sum(0)
        n += len(a)
    mean = total / max(n, 1)
    var = (total_sq / max(n, 1) - mean * mean).clamp_min(0)
    return CoderScan(binary=bool(getattr(coder, "binary", False)), width=width, n_tokens=n,
                     rate=(fires / max(n, 1)).numpy(), mean=mean.numpy(), std=var.sqrt().numpy())


def comsem_scores(a: torch.Tensor, stats: CoderScan, sae_score: str) -> torch.Tensor:
    """Per-token ComSem selection scores [n, width]. BAE: burstiness log2(|h - mean h| + 1e-6), so rare bits
    that fire and usually-on bits that are off rank high, and constant units never do. Other coders: the
    activation, or its z-score per feature."""
    if stats.binary:
        return torch.log2((a - torch.from_numpy(stats.mean).float()).abs() + 1e-6)
    if sae_score == "zscore":
        std = torch.from_numpy(stats.std).float()
        return (a - torch.from_numpy(stats.mean).float()) / torch.where(std > 0, std, torch.ones_like(std))
    return a


def activations(coder, store: ActivationStore, layer: int, features: list[int], stats: CoderScan,
                comsem_top_k: int = 0, sae_score: str = "zscore", chunk: int = 8192,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Activations of ``features`` on every token, float32 [n, len(features)], and, when ``comsem_top_k``, each
    token's top-k features by ComSem score, int32 [n, k] (stable sort: ties go to the lower feature index,
    as in the official code)."""
    cols = torch.tensor(features, dtype=torch.long)
    acts, tops = [], []
    for x in tqdm(_chunks(store, layer, chunk), total=-(-store.n_tokens // chunk), desc="encode (features)",
                  disable=not progress, leave=False):
        a = _encode(coder, x)
        acts.append(a[:, cols].numpy().astype(np.float32))
        if comsem_top_k:
            order = torch.sort(comsem_scores(a, stats, sae_score), dim=1, descending=True, stable=True).indices
            tops.append(order[:, :comsem_top_k].to(torch.int32).numpy())
    return np.concatenate(acts), (np.concatenate(tops) if comsem_top_k else None)
