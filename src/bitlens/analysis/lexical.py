"""Lexical baseline (no LLM): the best "token is in S" rule for a feature's minority state, with its exact
precision, recall and F1 over every stored token; and its mean over a coder's features (the sweep's lexical F1)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

LEXICAL_F1 = 0.9  # a token-set rule this good means the feature is lexical


def best_token_set(token: np.ndarray, state: np.ndarray, texts: Sequence[str], show: int = 8) -> dict[str, Any]:
    """Token ids sorted by P(state | token) (ties: more occurrences first); the prefix of that order with the best
    F1 is the rule. For a fixed set size, taking the most precise tokens first is what maximises F1 here."""
    vocab = int(max(token.max(initial=0), len(texts) - 1)) + 1
    n_t = np.bincount(token, minlength=vocab)
    k_t = np.bincount(token[state], minlength=vocab)
    cand = np.flatnonzero(k_t)
    n_pos = int(state.sum())
    if n_pos == 0:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0, "set_size": 0, "tokens": [], "lexical": False}
    prec = k_t[cand] / n_t[cand]
    order = cand[np.lexsort((-k_t[cand], -prec))]
    tp = np.cumsum(k_t[order])
    predicted = np.cumsum(n_t[order])
    f1 = 2 * tp / (n_pos + predicted)
    m = int(np.argmax(f1))
    chosen = order[:m + 1]
    return {"f1": float(f1[m]), "precision": float(tp[m] / predicted[m]), "recall": float(tp[m] / n_pos),
            "set_size": int(m + 1), "tokens": [texts[int(t)] for t in chosen[:show]],
            "lexical": bool(f1[m] >= LEXICAL_F1)}


def mean_lexical_f1(codes: torch.Tensor, token: np.ndarray) -> dict[str, Any]:
    """Mean over features of the best token-set rule's F1 for each feature's minority state (on when it fires on at
    most half the rows, else off), on rows whose token ids are ``token`` [n]; codes [n, width] (fires = non-zero).
    Features that never change state (dead or constant-on) have no minority state and are left out (``n``)."""
    fires = (codes != 0).cpu().numpy()
    f = fires.mean(0)
    live = np.flatnonzero((f > 0) & (f < 1))
    scores = [best_token_set(token, fires[:, j] if f[j] <= 0.5 else ~fires[:, j], [], show=0)["f1"] for j in live]
    return {"mean_f1": float(np.mean(scores)) if scores else float("nan"), "n": len(scores),
            "n_lexical": int(sum(s >= LEXICAL_F1 for s in scores))}
