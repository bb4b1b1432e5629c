"""Detection metrics with intervals. Missing answers (parse failures, failed requests) are counted and left out
of every rate; they are never read as "no"."""

from __future__ import annotations

import math
from typing import Any, Sequence

from ..analysis.intervals import Z95, wilson


def balanced_interval(k_pos: int, n_pos: int, k_neg: int, n_neg: int, z: float = Z95) -> tuple[float, float]:
    """Interval for (TPR + TNR) / 2: normal approximation on add-one-smoothed rates (Agresti-Caffo style), which
    stays sensible at 0/n and n/n."""
    if n_pos == 0 or n_neg == 0:
        return 0.0, 1.0
    a = (k_pos + 1) / (n_pos + 2)
    b = (k_neg + 1) / (n_neg + 2)
    centre = (a + b) / 2
    half = z * 0.5 * math.sqrt(a * (1 - a) / (n_pos + 2) + b * (1 - b) / (n_neg + 2))
    return max(0.0, centre - half), min(1.0, centre + half)


def population_precision(p: float, tpr: float, fpr: float) -> float:
    """Precision of the explanation as a detector over the corpus, where the state occurs at rate p:
    p TPR / (p TPR + (1 - p) FPR)."""
    num = p * tpr
    den = num + (1 - p) * fpr
    return num / den if den > 0 else float("nan")


def _rate(k: int, n: int) -> float:
    return k / n if n else float("nan")


def auroc(scores_pos: Sequence[float], scores_neg: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    if not scores_pos or not scores_neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in scores_pos for n in scores_neg)
    return wins / (len(scores_pos) * len(scores_neg))


def detection_metrics(labels: Sequence[int], answers: Sequence[bool | None], kinds: Sequence[str],
                      prevalence: float, p_yes: Sequence[float | None] | None = None) -> dict[str, Any]:
    """labels 1 = minority state, 0 = majority; answers True (yes), False (no), None (missing); kinds name each
    negative's sampler ('random', 'token_matched'). ``prevalence`` is the minority state's corpus rate.
    Precision uses the FPR of random negatives, which estimate the corpus-wide false-positive rate."""
    pos = [a for l, a in zip(labels, answers) if l == 1]
    neg = [(a, k) for l, a, k in zip(labels, answers, kinds) if l == 0]
    tp = sum(a is True for a in pos)
    n_pos = sum(a is not None for a in pos)
    tn = sum(a is False for a, _ in neg)
    n_neg = sum(a is not None for a, _ in neg)
    out: dict[str, Any] = {"n_pos": n_pos, "n_neg": n_neg, "n_missing": sum(a is None for a in answers),
                           "n_items": len(answers)}
    out["missing_rate"] = _rate(out["n_missing"], len(answers))
    out["tpr"], out["tpr_ci"] = _rate(tp, n_pos), wilson(tp, n_pos)
    out["tnr"], out["tnr_ci"] = _rate(tn, n_neg), wilson(tn, n_neg)
    for kind in ("random", "token_matched"):
        sub = [a for a, k in neg if k == kind and a is not None]
        out[f"tnr_{kind}"] = _rate(sum(a is False for a in sub), len(sub))
        out[f"n_neg_{kind}"] = len(sub)
    out["balanced_accuracy"] = (out["tpr"] + out["tnr"]) / 2 if n_pos and n_neg else float("nan")
    out["balanced_accuracy_ci"] = balanced_interval(tp, n_pos, tn, n_neg)
    fpr = 1 - out["tnr_random"] if out["n_neg_random"] else float("nan")
    out["precision_pop"] = population_precision(prevalence, out["tpr"], fpr) if n_pos and out["n_neg_random"] else float("nan")
    prec, rec = out["precision_pop"], out["tpr"]
    out["f1_pop"] = 2 * prec * rec / (prec + rec) if n_pos and prec == prec and prec + rec > 0 else float("nan")
    out["comsem_recall"] = out["tpr"]
    # AUROC of the judge's P(yes), when the backend reports it (local models; logprob-capable servers)
    probs = list(p_yes) if p_yes is not None else []
    if probs and all(p is not None for p, a in zip(probs, answers) if a is not None):
        out["auroc"] = auroc([p for p, l, a in zip(probs, labels, answers) if l == 1 and a is not None],
                             [p for p, l, a in zip(probs, labels, answers) if l == 0 and a is not None])
    else:
        out["auroc"] = float("nan")
    return out


def recall_metrics(answers: Sequence[bool | None]) -> dict[str, Any]:
    """ComSem: the fraction of held-out positives judged 'yes', with its Wilson interval."""
    n = sum(a is not None for a in answers)
    k = sum(a is True for a in answers)
    return {"n_items": len(answers), "n_pos": n, "n_missing": len(answers) - n,
            "missing_rate": _rate(len(answers) - n, len(answers)), "score": _rate(k, n), "score_ci": wilson(k, n)}
