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


def _rule_order(token: np.ndarray, state: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids with the state, most precise first (ties: more occurrences), and their counts (with the state,
    in all) on (token [n], state [n] bool)."""
    n_t = np.bincount(token, minlength=vocab)
    k_t = np.bincount(token[state], minlength=vocab)
    cand = np.flatnonzero(k_t)
    order = cand[np.lexsort((-k_t[cand], -(k_t[cand] / n_t[cand])))]
    return order, k_t, n_t


def held_out_rule_f1(token: np.ndarray, state: np.ndarray, fit: np.ndarray) -> float:
    """F1 on the rows ~fit of the token-set rule chosen (as ``best_token_set``) on the rows ``fit`` [n] bool.
    In-sample, a rule can list every rare token the state happens to fall on; scored on other rows it cannot."""
    vocab = int(token.max(initial=0)) + 1
    order, k_t, n_t = _rule_order(token[fit], state[fit], vocab)
    n_pos = int(state[fit].sum())
    held = ~fit
    n_held = int(state[held].sum())
    if n_pos == 0 or n_held == 0:
        return 0.0
    size = int(np.argmax(2 * np.cumsum(k_t[order]) / (n_pos + np.cumsum(n_t[order])))) + 1
    rule = np.zeros(vocab, dtype=bool)
    rule[order[:size]] = True
    predicted = rule[token[held]]
    tp = int((predicted & state[held]).sum())
    return 2 * tp / (n_held + int(predicted.sum()))


def mean_lexical_f1(codes: torch.Tensor, token: np.ndarray) -> dict[str, Any]:
    """Mean over features of the token-set rule's F1 for each feature's minority state (on when it fires on at
    most half the rows, else off), on rows whose token ids are ``token`` [n]; codes [n, width] (fires = non-zero).
    The rule is chosen on the even rows and scored on the odd ones (``held_out_rule_f1``). Features that never
    change state (dead or constant-on) have no minority state and are left out (``n``)."""
    fires = (codes != 0).cpu().numpy()
    f = fires.mean(0)
    live = np.flatnonzero((f > 0) & (f < 1))
    fit = np.arange(len(token)) % 2 == 0
    scores = [held_out_rule_f1(token, fires[:, j] if f[j] <= 0.5 else ~fires[:, j], fit) for j in live]
    return {"mean_f1": float(np.mean(scores)) if scores else float("nan"), "n": len(scores),
            "n_lexical": int(sum(s >= LEXICAL_F1 for s in scores)), "held_out": True}
