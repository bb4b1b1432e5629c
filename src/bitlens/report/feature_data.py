"""Per-feature data for the dashboard, from one encoding pass over every kept store token.

The pass runs through ``analysis.statistics.evaluate_coder`` (so FVU, L0, dead and dense counts use the library's
definitions) with the coder wrapped in a recorder that also keeps, per token, the firing bits bit-packed
(d'/8 bytes per token), a per-feature histogram (BAE and other binary coders: the pre-step margin; SAEs: the
non-zero activation values on log-spaced bins) and, for real-valued coders, each feature's top activations.

A feature *fires* where its activation is non-zero (as in ``statistics``). Its minority state is ON when the firing
rate p <= 0.5, else OFF (as in ``interpretation``): examples, contrasts, token tables and neighbours are all about
the minority state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from ..analysis.entropy import bernoulli_entropy_bits
from ..analysis.statistics import evaluate_coder
from ..interpretation.lexical import best_token_set
from ..interpretation.sampling import rng_for

HIST_BINS = 40
TOP_ACTS = 32  # running top activations kept per feature (real-valued coders)
MARGIN_STRIDE = 4  # binary coders: the margin histogram counts every 4th token


class _Recorder(torch.nn.Module):
    """Wraps a coder for ``evaluate_coder``: same encode/decode, and records what the dashboard needs per chunk."""

    def __init__(self, coder: torch.nn.Module, n_rows: int):
        super().__init__()
        self.coder = coder
        self.width = int(coder.width)
        self.binary = bool(getattr(coder, "binary", False))
        self.packed = np.zeros((n_rows, -(-self.width // 8)), dtype=np.uint8)
        self.offset = 0
        self.edges: torch.Tensor | None = None
        self.hist = torch.zeros(self.width * HIST_BINS, dtype=torch.long)
        self.top_vals = torch.full((TOP_ACTS, self.width), -float("inf"))
        self.top_rows = torch.zeros((TOP_ACTS, self.width), dtype=torch.long)
        self.act_sum = torch.zeros(self.width, dtype=torch.float64)
        self.hist_kind = "margin" if self.binary else "activation"

    def _code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        coder = self.coder
        if not hasattr(coder, "pre_activation"):
            return coder.encode(x), None
        pre = coder.pre_activation(x)
        if hasattr(coder, "activate"):
            return coder.activate(pre), pre
        if self.binary:  # the BAE's step: forward value 1[pre > 0] (the surrogate only shapes the backward)
            return (pre > 0).to(pre.dtype), pre
        return coder.encode(x), pre

    def _histogram(self, values: torch.Tensor, cols: torch.Tensor) -> None:
        if self.edges is None:  # fixed from the first chunk, so every chunk adds to the same bins
            sample = values[::max(1, values.numel() // 1_000_000)].float()
            if self.binary:
                m = float(sample.abs().quantile(0.995)) if sample.numel() else 1.0
                self.edges = torch.linspace(-(m or 1.0), m or 1.0, HIST_BINS + 1)
            else:
                logs = sample.log10()
                lo, hi = (float(logs.quantile(0.001)) - 0.3, float(logs.quantile(0.999)) + 0.3) if logs.numel() \
                    else (-3.0, 1.0)
                self.edges = torch.logspace(lo, hi, HIST_BINS + 1)
        if self.binary:  # uniform bins: arithmetic is several times faster than a search
            lo, step = float(self.edges[0]), float(self.edges[1] - self.edges[0])
            idx = ((values.float() - lo) / step).clamp_(0, HIST_BINS - 1).to(torch.long)
        else:
            idx = torch.bucketize(values.float().contiguous(), self.edges[1:-1].contiguous())
        # values beyond the edges go to the end bins
        self.hist += torch.bincount(idx.add_(cols * HIST_BINS), minlength=self.width * HIST_BINS)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        code, pre = self._code(x)
        n = code.shape[0]
        fires = (code != 0).cpu()
        self.packed[self.offset:self.offset + n] = np.packbits(fires.numpy(), axis=1)
        if self.binary and pre is not None:  # every MARGIN_STRIDE-th token: the full set would double the pass
            sub = pre.detach().cpu()[(-self.offset) % MARGIN_STRIDE::MARGIN_STRIDE]
            self._histogram(sub.reshape(-1), torch.arange(self.width).repeat(len(sub)))
        elif not self.binary:
            c = code.detach().cpu().float()
            rows, cols = fires.nonzero(as_tuple=True)
            vals = c[rows, cols]
            pos = vals > 0
            if pos.any():
                self._histogram(vals[pos], cols[pos])
            self.act_sum += c.sum(0, dtype=torch.float64)
            k = min(TOP_ACTS, n)
            v, i = c.topk(k, dim=0)
            merged_v = torch.cat([self.top_vals, v])
            merged_r = torch.cat([self.top_rows, i + self.offset])
            best = merged_v.topk(TOP_ACTS, dim=0).indices
            self.top_vals, self.top_rows = merged_v.gather(0, best), merged_r.gather(0, best)
        self.offset += n
        return code

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.coder.decode(code)


class CoderPass(NamedTuple):
    stats: dict[str, Any]
    """``evaluate_coder`` statistics over the kept tokens."""
    rate: np.ndarray
    """[width] firing rate f_j."""
    packed: np.ndarray
    """[n, ceil(width/8)] uint8: firing bits, np.packbits order (feature j is bit 7 - j % 8 of byte j // 8)."""
    hist: np.ndarray
    """[width, HIST_BINS] counts (margin or activation histogram)."""
    edges: np.ndarray
    """[HIST_BINS + 1] bin edges (the end bins also hold values beyond them)."""
    hist_kind: str
    """"margin" (binary coders: pre-step value, > 0 fires) or "activation" (non-zero activation values)."""
    top_vals: np.ndarray | None
    """[TOP_ACTS, width] largest activations (real-valued coders), descending; -inf where fewer."""
    top_rows: np.ndarray | None
    """[TOP_ACTS, width] their view rows."""
    mean_active: np.ndarray | None
    """[width] mean activation where the feature fires (real-valued coders)."""


@torch.no_grad()
def coder_pass(coder: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor | None = None,
               chunk: int = 8192) -> CoderPass:
    """One encoding pass over ``rows`` [n, d]: statistics plus the per-feature records above."""
    rec = _Recorder(coder, rows.shape[0]).eval()
    ev = evaluate_coder(rec, rows, targets, chunk=chunk, cofiring=False)
    rate = ev.frequencies
    edges = rec.edges if rec.edges is not None else torch.linspace(-1, 1, HIST_BINS + 1)
    real = not rec.binary
    fires = np.maximum(rate * rows.shape[0], 1)
    return CoderPass(ev.stats, rate, rec.packed, rec.hist.view(rec.width, HIST_BINS).numpy(), edges.numpy(),
                     rec.hist_kind, rec.top_vals.numpy() if real else None, rec.top_rows.numpy() if real else None,
                     rec.act_sum.numpy() / fires if real else None)


def feature_bits(packed: np.ndarray, byte: int) -> np.ndarray:
    """[n, 8] bool firing bits of features 8*byte .. 8*byte+7."""
    return np.unpackbits(packed[:, byte:byte + 1], axis=1).astype(bool)


def bit(packed: np.ndarray, rows: np.ndarray, feature: int) -> np.ndarray:
    """Firing bits of ``feature`` at ``rows``."""
    return (packed[rows, feature >> 3] >> (7 - (feature & 7))) & 1 == 1


class FeatureSummary(NamedTuple):
    feature: int
    rate: float
    entropy_bits: float
    polarity: str  # "on" or "off": the minority state
    n_minority: int
    lexical: dict[str, Any]
    top_tokens: list[dict[str, Any]]  # token id, text, count, fraction of that token's occurrences
    concentration: float  # share of the minority-state tokens that are the single most common token
    examples: np.ndarray  # view rows of minority-state examples
    example_kind: list[str]  # "random" or "top" per example
    contrast: np.ndarray  # view rows: same tokens, majority state


def summarise_feature(j: int, state: np.ndarray, rate: float, tokens: np.ndarray, n_t: np.ndarray,
                      texts: list[str], *, seed: int, n_examples: int, n_contrast: int, n_top_tokens: int = 12,
                      top_rows: np.ndarray | None = None) -> FeatureSummary:
    """Lexical rule, token table, examples and same-token contrasts of feature ``j`` whose minority state is
    ``state`` [n] bool over view rows with token ids ``tokens`` [n] (``n_t``: count of every token id)."""
    pos = np.flatnonzero(state)
    rng = rng_for(seed, j, "dashboard")
    lexical = best_token_set(tokens, state, texts)
    k_t = np.bincount(tokens[pos], minlength=len(n_t))
    cand = np.flatnonzero(k_t)
    top = cand[np.lexsort((cand, -k_t[cand]))][:n_top_tokens]
    top_tokens = [{"id": int(t), "text": texts[int(t)], "count": int(k_t[t]), "fraction": float(k_t[t] / n_t[t])}
                  for t in top]
    concentration = float(k_t[top[0]] / len(pos)) if len(pos) else 0.0
    if top_rows is not None:  # real-valued coder: half the examples are the top activations, half random
        n_top = min(n_examples // 2, len(top_rows))
        chosen = list(top_rows[:n_top])
        rest = np.setdiff1d(pos, chosen)
        extra = _draw(rng, rest, n_examples - n_top)
        examples = np.concatenate([np.asarray(chosen, dtype=np.int64), extra]).astype(np.int64)
        kinds = ["top"] * n_top + ["random"] * len(extra)
    else:  # binary: every firing is equal, so a uniform random draw shows what the feature typically does
        examples = _draw(rng, pos, n_examples)
        kinds = ["random"] * len(examples)
    common = np.zeros(len(n_t), dtype=bool)
    common[top[:5]] = True
    pool = np.flatnonzero(~state & common[tokens])  # a table lookup: np.isin is ~20x slower here
    contrast = _draw(rng, pool, n_contrast)
    p = float(rate)
    return FeatureSummary(j, p, float(bernoulli_entropy_bits(np.array([p]))[0]),
                          "off" if p > 0.5 else "on", int(len(pos)), lexical, top_tokens, concentration,
                          examples, kinds, contrast)


def _draw(rng: np.random.Generator, rows: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` of ``rows`` without replacement, in random order."""
    return rng.choice(rows, size=min(k, len(rows)), replace=False).astype(np.int64) if len(rows) else \
        np.zeros(0, dtype=np.int64)


def neighbours(j: int, pos: np.ndarray, packed: np.ndarray, n_minority: np.ndarray, off: np.ndarray,
               live: np.ndarray, rng: np.random.Generator, k: int = 10, cap: int = 1024) -> list[dict[str, Any]]:
    """Features whose minority state co-occurs most with ``j``'s, by the phi coefficient of the two minority
    states. Co-occurrence counts are exact when ``j`` has at most ``cap`` minority tokens, else estimated from a
    random ``cap`` of them (so rare features get exact neighbours and common ones a tight estimate).

    ``pos``: j's minority view rows; ``n_minority`` [width] minority counts; ``off`` [width] polarity OFF;
    ``live`` [width] bool."""
    n = packed.shape[0]
    width = len(n_minority)
    if len(pos) == 0:
        return []
    sample = pos if len(pos) <= cap else rng.choice(pos, size=cap, replace=False)
    fires = np.unpackbits(packed[sample], axis=1, count=width).sum(0, dtype=np.int64)
    both = fires * (len(pos) / len(sample))
    both = np.where(off, len(pos) - both, both)  # minority of an OFF feature = not firing
    n_a, n_b = float(len(pos)), n_minority.astype(np.float64)
    denom = np.sqrt(n_a * (n - n_a) * n_b * (n - n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(denom > 0, (n * both - n_a * n_b) / denom, -np.inf)
    phi[~live] = -np.inf
    phi[j] = -np.inf
    best = np.argsort(-phi, kind="stable")[:k]
    return [{"feature": int(b), "phi": float(phi[b]), "p_given": float(both[b] / n_a)} for b in best
            if np.isfinite(phi[b]) and phi[b] > 0]
