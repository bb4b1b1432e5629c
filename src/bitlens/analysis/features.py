"""Per-feature summaries: firing rates and the tokens each feature fires on."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch


def firing_rates(codes: torch.Tensor) -> np.ndarray:
    """Fraction of rows with each unit on. Args: codes [n, m] (0/1). Returns: [m] float64."""
    return codes.double().mean(0).cpu().numpy()


def top_tokens(codes: torch.Tensor, token_text: Sequence[str], unit: int, k: int = 8) -> list[dict[str, Any]]:
    """The ``k`` token strings on which ``unit`` fires most often: count, and the fraction of that token's
    occurrences on which it fires."""
    fired = codes[:, unit].bool().cpu().numpy()
    on = Counter(t for t, f in zip(token_text, fired) if f)
    total = Counter(token_text)
    return [{"token": tok, "count": n, "fraction_of_token": n / total[tok]} for tok, n in on.most_common(k)]


def frequent_features(codes: torch.Tensor, token_text: Sequence[str], n: int = 20, k: int = 8,
                      near_constant: float = 0.99) -> list[dict[str, Any]]:
    """The ``n`` most frequently firing units that are not (nearly) constant, 0 < f < ``near_constant``, with
    their top tokens. Units on for more than 99% of tokens fire on everything, so they would fill the list with
    the corpus' most common tokens."""
    f = firing_rates(codes)
    candidates = np.flatnonzero((f > 0) & (f < near_constant))
    chosen = candidates[np.argsort(-f[candidates], kind="stable")[:n]]
    return [{"feature": int(j), "firing_rate": float(f[j]), "top_tokens": top_tokens(codes, token_text, int(j), k)}
            for j in chosen]
