"""Feature choice and example samplers. Every sampler draws from its own generator seeded by
(run seed, feature, stage), so one feature's examples never depend on which other features ran."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

# firing-rate bins (upper edges); features above 0.5 are usually on and explained by their OFF state
RATE_EDGES = (1e-4, 1e-3, 1e-2, 1e-1, 0.5, 1.0)
RATE_LABELS = ("<1e-4", "1e-4..1e-3", "1e-3..1e-2", "1e-2..0.1", "0.1..0.5", ">=0.5")


RUN_LEVEL = 2**32 - 1  # the "feature" of run-level draws (controls)


def rng_for(seed: int, feature: int, stage: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, feature, zlib.crc32(stage.encode())]))


def rate_bin(p: float) -> str:
    if p <= 0.0:
        return "dead"
    if p >= 1.0:
        return "always_on"
    for edge, label in zip(RATE_EDGES, RATE_LABELS):
        if p < edge:
            return label
    return RATE_LABELS[-1]


def choose_features(rate: np.ndarray, n: int, seed: int, eligible: np.ndarray | None = None) -> list[int]:
    """``n`` features stratified by firing-rate bin: equal shares per non-empty bin (bins with too few features
    pass their share on), random within a bin. Dead and always-on units, and those not ``eligible`` (too few
    minority-state tokens to score), are never chosen; the summary counts them."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFEA7]))
    pools = {label: [] for label in RATE_LABELS}
    for j, p in enumerate(rate):
        if eligible is not None and not eligible[j]:
            continue
        label = rate_bin(float(p))
        if label in pools:
            pools[label].append(j)
    pools = {k: rng.permutation(v).tolist() for k, v in pools.items() if v}
    quota = {k: 0 for k in pools}
    left = min(n, sum(len(v) for v in pools.values()))
    while left:
        open_bins = [k for k in pools if quota[k] < len(pools[k])]
        share = max(1, left // len(open_bins))
        for k in open_bins:
            take = min(share, len(pools[k]) - quota[k], left)
            quota[k] += take
            left -= take
            if not left:
                break
    return sorted(j for k in pools for j in pools[k][:quota[k]])


def split_units(doc: np.ndarray, chunk: np.ndarray, positives: np.ndarray, rng: np.random.Generator,
                explain_share: float = 0.5) -> tuple[np.ndarray, str]:
    """Boolean [n] 'explain side' mask splitting by document (by model input when all positives lie in one
    document), so no sentence is on both sides. Returns (mask, unit name)."""
    for unit_name, unit in (("document", doc.astype(np.int64)), ("chunk", doc.astype(np.int64) * 1_000_003 + chunk)):
        pos_units, counts = np.unique(unit[positives], return_counts=True)
        if len(pos_units) < 2:
            continue
        order = rng.permutation(len(pos_units))
        cum = np.cumsum(counts[order])
        k = int(np.searchsorted(cum, explain_share * cum[-1]))  # first k+1 units hold about the share
        k = min(max(k, 0), len(pos_units) - 2) + 1
        return np.isin(unit, pos_units[order[:k]]), unit_name
    return np.zeros(len(doc), dtype=bool), "none"


def capped_sample(rows: np.ndarray, n: int, rng: np.random.Generator, token: np.ndarray, doc: np.ndarray,
                  per_token: int, per_doc: int) -> np.ndarray:
    """Up to ``n`` of ``rows`` in random order with at most ``per_token`` of one token id and ``per_doc`` of one
    document; topped up without the caps when they leave too few."""
    order = rng.permutation(rows)
    taken, tok_count, doc_count = [], {}, {}
    for r in order:
        t, d = int(token[r]), int(doc[r])
        if tok_count.get(t, 0) < per_token and doc_count.get(d, 0) < per_doc:
            taken.append(r)
            tok_count[t] = tok_count.get(t, 0) + 1
            doc_count[d] = doc_count.get(d, 0) + 1
            if len(taken) == n:
                break
    if len(taken) < n:
        chosen = set(taken)
        taken += [r for r in order if r not in chosen][:n - len(taken)]
    return np.asarray(taken, dtype=np.int64)


def random_sample(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(rows)[:n].astype(np.int64)


@dataclass
class DetectionSample:
    """Rows (store order indices) of a feature's examples; ``kinds`` names the sampler of each test negative."""

    split_unit: str
    explain_pos: np.ndarray
    explain_neg: np.ndarray
    test_pos: np.ndarray
    test_neg: np.ndarray
    test_neg_kind: list[str] = field(default_factory=list)


def detection_sample(state: np.ndarray, doc: np.ndarray, chunk: np.ndarray, token: np.ndarray, *, seed: int,
                     feature: int, n_explain: int, n_explain_neg: int, n_test_pos: int, n_test_neg: int,
                     per_token: int, per_doc: int) -> DetectionSample | None:
    """Examples for the default scorer; ``state`` [n] bool marks the minority state. None when the positives
    cannot be split into an explain side and a test side."""
    rng = rng_for(seed, feature, "sample")
    positives = np.flatnonzero(state)
    explain_side, unit = split_units(doc, chunk, positives, rng)
    if unit == "none":
        return None
    exp_pos_rows = positives[explain_side[positives]]
    test_pos_rows = positives[~explain_side[positives]]
    explain_pos = capped_sample(exp_pos_rows, n_explain, rng, token, doc, per_token, per_doc)
    # explainer negatives: the same token strings where the feature is in its majority state
    majority = ~state
    matched_exp = np.flatnonzero(majority & explain_side & np.isin(token, token[explain_pos]))
    explain_neg = random_sample(matched_exp, n_explain_neg, rng)
    test_pos = random_sample(test_pos_rows, n_test_pos, rng)
    test_side_neg = majority & ~explain_side
    n_matched = n_test_neg // 2
    matched = random_sample(np.flatnonzero(test_side_neg & np.isin(token, token[test_pos_rows])), n_matched, rng)
    pool = np.flatnonzero(test_side_neg)
    pool = pool[~np.isin(pool, matched)]
    random_neg = random_sample(pool, n_test_neg - len(matched), rng)
    return DetectionSample(unit, explain_pos, explain_neg, test_pos, np.concatenate([random_neg, matched]),
                           ["random"] * len(random_neg) + ["token_matched"] * len(matched))
