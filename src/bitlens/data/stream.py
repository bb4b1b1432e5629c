"""Training straight from a model: activations of one layer computed while the trainer reads them, no store.

``ModelStream`` is a row source (``sharded``: its rows are this process's) that runs the LM over its share of the
training documents and serves the hidden states of one layer through a shuffling buffer:

* **documents**: each pass over the training documents takes them in a seeded random order (seed, pass); under
  torchrun rank r of N takes every N-th of them (``order[r::N]``), so each rank runs the LM on its own shard.
  ``max_tokens`` is the training tokens per pass over all ranks (``max_tokens // N`` per rank; 0 = every document).
* **token selection** as ``bitlens extract``: no padding, no special tokens, no position 0 (the attention sink);
  and, as the store's split does, rows whose norm exceeds ``OUTLIER_FACTOR`` times the median norm of the rank's
  first window are left out.
* **shuffling buffer**: the sequences of a pass are cut, by their token counts alone, into windows of about
  ``buffer_rows`` rows; a window is computed by the LM, shuffled with a generator seeded by (seed, rank, pass,
  window) and served in batches (a batch may span two windows). Memory: one window of rows (buffer_rows x d floats).

**Resume**: the position after every batch is (pass, window, rows of the window already served, outlier threshold);
the trainer keeps every rank's in its checkpoint. A resumed run re-plans the pass (tokenizer only), re-computes
the current window with the LM (the same rows, in the same shuffled order) and continues after the rows served, so
it serves exactly the batches the uninterrupted run would have. The document shards depend on the number of
ranks, so such a run resumes only with as many processes as it started with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..io import BitlensError
from .corpora import Corpus
from .extract import capture_layers, check_layers, iter_sequences, keep_mask_and_meta, pad_batch
from .models import LoadedModel
from .store_format import OUTLIER_FACTOR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """Sequences [first, stop) of a pass's plan and the rows they give (before outliers are left out)."""

    first: int
    stop: int
    rows: int


def split_documents(n_documents: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) corpus indices: a seeded random ``val_fraction`` of the documents (at least one when
    the fraction is positive) is held out, as ``ActivationStore.split`` holds out documents."""
    if n_documents < (2 if val_fraction > 0 else 1):
        raise BitlensError(f"the corpus has {n_documents} document(s): too few to hold some out for validation")
    order = np.random.default_rng(seed).permutation(n_documents)
    n_val = min(max(round(val_fraction * n_documents), 1), n_documents - 1) if val_fraction > 0 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class _Runner:
    """Runs the LM over planned sequences and returns the selected rows of one layer (float32 [n, d])."""

    def __init__(self, lm: LoadedModel, corpus: Corpus, layer: int, max_seq_len: int, forward_batch: int,
                 include_first: bool):
        self.lm, self.corpus, self.layer = lm, corpus, check_layers([layer], lm.n_layers)[0]
        self.max_seq_len, self.forward_batch, self.exclude_first = max_seq_len, forward_batch, not include_first
        self.special = set(lm.tokenizer.all_special_ids)
        self.pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0

    def plan(self, documents: Sequence[int], budget: int) -> tuple[list, list[int]]:
        """Sequences of ``documents`` (in that order) until ``budget`` rows (0 = all), and the rows of each."""
        seqs, counts, total = [], [], 0
        for seq in iter_sequences(self.lm.tokenizer, self.corpus.documents, list(documents), self.max_seq_len):
            keep, _, _ = keep_mask_and_meta([seq], len(seq.tokens), self.special, self.exclude_first)
            n = int(keep.sum())
            if budget and total + n > budget:
                n = budget - total
            if n <= 0:
                continue
            seqs.append(seq)
            counts.append(n)
            total += n
            if budget and total >= budget:
                break
        return seqs, counts

    @torch.no_grad()
    def rows(self, seqs: Sequence, counts: Sequence[int]) -> torch.Tensor:
        out = []
        for i in range(0, len(seqs), self.forward_batch):
            batch, want = seqs[i:i + self.forward_batch], counts[i:i + self.forward_batch]
            ids, mask = pad_batch(batch, self.pad)
            keep, _, _ = keep_mask_and_meta(batch, ids.shape[1], self.special, self.exclude_first)
            hidden = capture_layers(self.lm, ids, mask, [self.layer])[self.layer]
            for j, n in enumerate(want):  # a sequence cut by the token budget keeps its first n rows
                out.append(hidden[j][keep[j].to(hidden.device)][:n].float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.lm.d_model)


class ModelStream:
    """Rows of hidden_states[layer] of ``lm`` over ``documents``, computed on the fly (see the module docstring)."""

    sharded = True

    def __init__(self, lm: LoadedModel, corpus: Corpus, layer: int, documents: Sequence[int], *,
                 max_tokens: int = 0, max_seq_len: int = 256, forward_batch: int = 16, buffer_rows: int = 65536,
                 include_first: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1):
        if buffer_rows < 1 or max_tokens < 0:
            raise BitlensError("buffer rows must be >= 1 and max tokens >= 0")
        self.runner = _Runner(lm, corpus, layer, max_seq_len, forward_batch, include_first)
        self.documents = np.asarray(documents, dtype=np.int64)
        self.budget = max_tokens // world_size if max_tokens else 0
        if max_tokens and self.budget < 1:
            raise BitlensError(f"{max_tokens} tokens cannot be shared by {world_size} processes")
        self.buffer_rows, self.seed, self.rank, self.world_size = buffer_rows, seed, rank, world_size
        self.dim = lm.d_model
        self._plans: dict[int, tuple[list, list[int], list[Window]]] = {}
        self._cached: tuple[tuple[int, int], torch.Tensor] | None = None
        self.position = (0, 0, 0)  # (pass, window, rows of the window served)
        self.threshold: float | None = None
        _, counts, _ = self._plan(0)
        self.n_rows = int(sum(counts))  # rows per pass on this rank, before outliers are left out
        if self.n_rows == 0:
            raise BitlensError(f"rank {rank} of {world_size} has no tokens to train on: its share of "
                               f"{len(self.documents)} documents is empty (use fewer processes or more text)")

    # ---- planning: by the tokenizer alone -------------------------------------------------------------------
    def _plan(self, epoch: int) -> tuple[list, list[int], list[Window]]:
        if epoch not in self._plans:
            order = self.documents[np.random.default_rng([self.seed, epoch]).permutation(len(self.documents))]
            seqs, counts = self.runner.plan(order[self.rank::self.world_size], self.budget)
            windows, first, filled = [], 0, 0
            for i, n in enumerate(counts):
                filled += n
                if filled >= self.buffer_rows or i == len(counts) - 1:
                    windows.append(Window(first, i + 1, filled))
                    first, filled = i + 1, 0
            self._plans = {epoch: (seqs, counts, windows)}  # one pass planned at a time
        return self._plans[epoch]

    # ---- rows --------------------------------------------------------------------------------------------
    def _window(self, epoch: int, index: int) -> torch.Tensor:
        """The window's rows without outliers, shuffled (deterministic in seed, rank, pass and window)."""
        if self._cached is not None and self._cached[0] == (epoch, index):
            return self._cached[1]
        seqs, counts, windows = self._plan(epoch)
        w = windows[index]
        rows = self.runner.rows(seqs[w.first:w.stop], counts[w.first:w.stop])
        norms = rows.double().norm(dim=1)
        if self.threshold is None:  # fixed by the first window this rank computes in a fresh run
            self.threshold = float(OUTLIER_FACTOR * norms.median()) if len(norms) else float("inf")
        rows = rows[norms <= self.threshold]
        gen = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, self.rank, epoch, index])
                                                .integers(1 << 62)))
        rows = rows[torch.randperm(len(rows), generator=gen)]
        self._cached = ((epoch, index), rows)
        return rows

    def rows(self, limit: int | None = None) -> torch.Tensor:
        """Rows of the first window of the first pass (the sample that starts training: scales, variance)."""
        rows = self._window(0, 0)
        return rows if limit is None else rows[:limit]

    def stream(self, batch_size: int) -> Iterator[torch.Tensor]:
        """This rank's batches from the current position on, forever (pass after pass); ``position`` follows
        every batch served."""
        epoch, index, offset = self.position
        carry = torch.zeros(0, self.dim)
        while True:
            windows = self._plan(epoch)[2]
            if index >= len(windows):
                epoch, index, offset = epoch + 1, 0, 0
                continue
            data = self._window(epoch, index)[offset:]
            base = len(carry) - offset  # data row i is row (i - base) of the window
            data = torch.cat([carry, data]) if len(carry) else data
            full = len(data) // batch_size * batch_size
            for i in range(0, full, batch_size):
                self.position = (epoch, index, i + batch_size - base)
                yield data[i:i + batch_size]
            carry = data[full:]
            index, offset = index + 1, 0

    def stream_state(self) -> list[float]:
        """The position after the last batch served, and the outlier threshold (both needed to resume)."""
        return [*map(float, self.position), -1.0 if self.threshold is None else self.threshold]

    def load_stream_state(self, state: Sequence[float]) -> None:
        if len(state) != 4 or any(v < 0 for v in state[:3]):
            raise BitlensError(f"not a stream position: {list(state)}")
        self.position = tuple(int(v) for v in state[:3])  # type: ignore[assignment]
        self.threshold = None if state[3] < 0 else float(state[3])


def model_rows(lm: LoadedModel, corpus: Corpus, layer: int, documents: Sequence[int], max_rows: int, *,
               max_seq_len: int = 256, forward_batch: int = 16, include_first: bool = False) -> torch.Tensor:
    """Up to ``max_rows`` rows of hidden_states[layer] over ``documents`` (in the order given), without outliers
    (norm above OUTLIER_FACTOR times their median): e.g. the validation rows of an on-the-fly run."""
    runner = _Runner(lm, corpus, layer, max_seq_len, forward_batch, include_first)
    rows = runner.rows(*runner.plan(documents, max_rows))
    norms = rows.double().norm(dim=1)
    return rows[norms <= OUTLIER_FACTOR * norms.median()] if len(rows) else rows
