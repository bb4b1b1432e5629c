"""Token contexts rebuilt from an activation store: neighbouring rows of the same model input (document and
chunk) give the text around a target token; rows of the same sentence give its sentence."""

from __future__ import annotations

import numpy as np

from ..data.store import ActivationStore


def _run_bounds(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows grouped in contiguous runs of equal ``keys`` rows [n, k]: first and one-past-last row of each
    row's run."""
    n = len(keys)
    change = np.ones(n, dtype=bool)
    change[1:] = (keys[1:] != keys[:-1]).any(axis=1)
    idx = np.arange(n)
    start = np.maximum.accumulate(np.where(change, idx, 0))
    end_change = np.ones(n, dtype=bool)
    end_change[:-1] = change[1:]
    end = np.minimum.accumulate(np.where(end_change, idx + 1, n)[::-1])[::-1]
    return start, end


class TokenTable:
    """All stored tokens in store order with their metadata, for sampling and display."""

    def __init__(self, store: ActivationStore):
        meta = np.asarray(store.meta)
        self.doc = meta[:, 0]
        self.chunk = meta[:, 1]
        self.sentence = meta[:, 2]
        self.position = meta[:, 3]
        self.token = meta[:, 4]
        self.texts = store.token_texts
        self.n = len(meta)
        self.seq_start, self.seq_end = _run_bounds(meta[:, :2])
        self.sent_start, self.sent_end = _run_bounds(meta[:, :3])
        self.documents = store.document_table

    def text(self, row: int) -> str:
        return self.texts[int(self.token[row])]

    def _texts(self, lo: int, hi: int) -> list[str]:
        return [self.texts[int(t)] for t in self.token[lo:hi]]

    def context(self, row: int, left: int, right: int) -> tuple[list[str], str, list[str]]:
        """(tokens before, target, tokens after) within the same model input, at most left/right tokens."""
        lo = max(int(self.seq_start[row]), row - left)
        hi = min(int(self.seq_end[row]), row + 1 + right)
        return self._texts(lo, row), self.text(row), self._texts(row + 1, hi)

    def sentence_of(self, row: int) -> tuple[list[str], str, list[str]]:
        """(before, target, after) within the target's sentence."""
        return (self._texts(int(self.sent_start[row]), row), self.text(row),
                self._texts(row + 1, int(self.sent_end[row])))

    def document_id(self, row: int) -> str:
        d = int(self.doc[row])
        return str(self.documents[d].get("id", d)) if d < len(self.documents) else str(d)
