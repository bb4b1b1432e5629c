"""The activation store's reader: a complete store's shards memory-mapped and validated against its manifest,
served per layer as document-split views of float32 row batches.

The on-disk layout is described in ``store_format.py``; ``store_writer.py`` writes it. ``StoreWriter`` and the
format's public names are re-exported here, so ``from bitlens.data.store import ...`` keeps working for them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..io import BitlensError, npy_problem
from .store_format import (N_META, OUTLIER_FACTOR, _STORE_DTYPES, Key, _all_finite, _describe, _layer_file,
                           _read_manifest, read_blocks, release_pages)
# the writer and the format's public names, re-exported: `from bitlens.data.store import X` predates the split
from .store_format import FORMAT, FORMAT_VERSION, META_COLUMNS, SITE_KINDS, parse_site  # noqa: F401
from .store_writer import StoreWriter  # noqa: F401


@dataclass
class TokenMeta:
    """Per-token metadata aligned with a row selection: int arrays ``[n]`` and decoded token texts."""

    doc: np.ndarray  # corpus document index (see ActivationStore.document_table)
    chunk: np.ndarray  # model input (sequence) index within the document
    sentence: np.ndarray  # sentence index within the document
    position: np.ndarray  # position in the model input sequence
    token: np.ndarray  # token id
    text: list[str]  # decoded token text, e.g. " whale"

    def __len__(self) -> int:
        return len(self.token)


class ActivationStore:
    """Read-only access to a complete store: memory-mapped shards, validated against the manifest."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        if not self.manifest.get("complete"):
            done = sum(s["rows"] for s in self.manifest.get("shards", []))
            raise BitlensError(f"store {self.path} is incomplete ({done} tokens committed): rerun "
                               "`bitlens extract` with the same settings to resume it")
        self.layers: list[int] = list(self.manifest["layers"])
        self.sites: list[str] = list(self.manifest.get("sites", []))  # absent in stores older than sites
        self.dim: int = int(self.manifest["dim"])
        self.n_tokens: int = int(self.manifest["n_tokens"])
        self._shards = self.manifest["shards"]
        self._offsets = np.cumsum([0] + [s["rows"] for s in self._shards])
        self._validate()
        self._meta = np.concatenate([self._load(s["name"], "meta.npy") for s in self._shards])
        self._texts: list[str] | None = None
        self._docs: list[dict] | None = None
        self.finite_checks: dict[Key, dict[str, Any]] = {}  # layer -> result of check_finite

    # -- validation and raw access

    def _load(self, shard: str, file: str) -> np.ndarray:
        return np.load(self.path / "shards" / shard / file, mmap_mode="r", allow_pickle=False)

    def _validate(self) -> None:
        if int(self._offsets[-1]) != self.n_tokens:
            raise BitlensError(f"store {self.path}: shards hold {int(self._offsets[-1])} rows, "
                               f"manifest says {self.n_tokens}")
        expected_dtype = np.dtype(_STORE_DTYPES[self.manifest["dtype"]])
        for shard in self._shards:
            for file, shape, dtype in [(_layer_file(layer), (shard["rows"], self.dim), expected_dtype)
                                       for layer in self.keys] + [("meta.npy", (shard["rows"], N_META), np.dtype(np.int32))]:
                where = f"store {self.path}: shard {shard['name']}/{file}"
                try:
                    array = self._load(shard["name"], file)
                except FileNotFoundError:
                    raise BitlensError(f"{where} is missing") from None
                except (ValueError, OSError, EOFError) as exc:
                    raise BitlensError(f"{where}: {npy_problem(self.path / 'shards' / shard['name'] / file, exc)}") from None
                if array.shape != shape or array.dtype != dtype:
                    raise BitlensError(f"{where} is {array.dtype}{list(array.shape)}, manifest says {dtype}{list(shape)}")

    @property
    def keys(self) -> list[Key]:
        """Residual layers (ints) then named sites (strings)."""
        return [*self.layers, *self.sites]

    def layer_shards(self, layer: Key) -> list[np.ndarray]:
        """Memory-mapped ``[rows, d]`` arrays of one layer or site, one per shard, in store order; checked once
        per store object for NaN and inf (``check_finite``)."""
        if layer not in self.keys:
            raise BitlensError(f"{_describe(layer)} is not in store {self.path} ({self._contents()})")
        arrays = [self._load(s["name"], _layer_file(layer)) for s in self._shards]
        if layer not in self.finite_checks:
            self.check_finite(layer, arrays)
        return arrays

    def check_finite(self, layer: Key, arrays: list[np.ndarray] | None = None,
                     chunk_rows: int = 16384) -> dict[str, Any]:
        """Refuse a layer with any NaN or inf (one line naming shard, row, document and position); the result
        (shards, rows, seconds) is kept in ``finite_checks`` for the run's manifest. One sequential pass over the
        layer's shards, in chunks: about a second per GB."""
        started = time.perf_counter()
        arrays = arrays if arrays is not None else [self._load(s["name"], _layer_file(layer)) for s in self._shards]
        for shard, array, offset in zip(self._shards, arrays, self._offsets):
            for lo in range(0, len(array), chunk_rows):
                block = np.asarray(array[lo:lo + chunk_rows])
                if _all_finite(block):
                    continue
                row = lo + int(np.argmax(~np.isfinite(block).all(axis=1)))
                value = block[row - lo][~np.isfinite(block[row - lo])][0]
                doc, pos = (int(v) for v in self._load(shard["name"], "meta.npy")[row, [0, 3]])
                raise BitlensError(f"store {self.path}: shard {shard['name']}/{_layer_file(layer)} holds "
                                   f"{'NaN' if np.isnan(value) else 'inf'} at row {row} (document {doc}, position "
                                   f"{pos}); the store is damaged: extract it again")
            release_pages([array])
        check = {"layer": layer, "shards": len(arrays), "rows": int(sum(len(a) for a in arrays)),
                 "seconds": round(time.perf_counter() - started, 3)}
        self.finite_checks[layer] = check
        return check

    def _contents(self) -> str:
        return f"layers: {self.layers}" + (f", sites: {self.sites}" if self.sites else "")

    @property
    def meta(self) -> np.ndarray:
        """int32 ``[n_tokens, 5]``: doc, chunk, sentence, position, token id per stored row (store order)."""
        return self._meta

    @property
    def token_texts(self) -> list[str]:
        """Decoded text per token id."""
        if self._texts is None:
            self._texts = json.loads((self.path / "tokens.json").read_text())
        return self._texts

    @property
    def document_table(self) -> list[dict]:
        """Records of all corpus documents (index, id, order, metadata), indexed by corpus index."""
        if self._docs is None:
            lines = (self.path / "documents.jsonl").read_text().splitlines()
            self._docs = [json.loads(line) for line in lines if line.strip()]
        return self._docs

    @property
    def documents(self) -> list[dict]:
        """Records of the documents that have stored tokens, in corpus order."""
        table = self.document_table
        return [table[i] for i in np.unique(self._meta[:, 0])]

    @property
    def document_ids(self) -> list[str]:
        """Ids (e.g. "sotu/1790_george_washington_n") of the documents that have stored tokens."""
        return [d["id"] for d in self.documents]

    def stats(self, layer: Key) -> dict[str, Any]:
        """Normalisation statistics of one layer: mean (list [d]), mean_sq_norm, variance, norms, outliers."""
        return self.manifest["stats"][str(layer)]

    def default_layer(self, layer: Key | None) -> Key:
        if layer is None:
            if len(self.layers) != 1:
                raise BitlensError(f"store {self.path} has layers {self.layers}: choose one")
            return self.layers[0]
        if layer not in self.keys:
            raise BitlensError(f"{_describe(layer)} is not in store {self.path} ({self._contents()})")
        return layer

    # -- views

    def view(self, layer: Key | None = None) -> "StoreView":
        """All rows of one layer."""
        return StoreView(self, self.default_layer(layer), np.ones(self.n_tokens, dtype=bool))

    def outliers(self, layer: Key) -> np.ndarray:
        """Boolean ``[n_tokens]``: rows whose norm exceeds ``OUTLIER_FACTOR`` times the layer's median norm.

        These are attention-sink tokens ("massive activations", e.g. an early position of a sequence with a norm
        100x the typical one). A handful of them carries a third of a layer's total variance: in a training batch
        one such row outweighs the other 511, and in an evaluation set it dominates MSE and FVU."""
        layer = self.default_layer(layer)
        median = self.stats(layer)["norm_median"]
        norms = np.concatenate([self._load(s["name"], _layer_file(layer, "norm")) for s in self.manifest["shards"]])
        return norms.astype(np.float64) > OUTLIER_FACTOR * median

    def split(self, val_fraction: float, seed: int, layer: Key | None = None, *,
              keep_outliers: bool = False) -> tuple["StoreView", "StoreView"]:
        """Split by document: a seeded random ``val_fraction`` of the documents (at least one when the
        fraction is positive) goes to validation, the rest to training. Returns ``(train, val)``.
        Outlier rows (see ``outliers``) are left out of both unless ``keep_outliers``."""
        if not 0.0 <= val_fraction < 1.0:
            raise BitlensError(f"validation fraction must be in [0, 1), not {val_fraction}")
        layer = self.default_layer(layer)
        docs = np.unique(self._meta[:, 0])
        n_val = int(round(val_fraction * len(docs)))
        if val_fraction > 0:
            if len(docs) < 2:
                raise BitlensError(f"store {self.path} has 1 document: cannot split train/validation by document")
            n_val = min(max(n_val, 1), len(docs) - 1)
        val_docs = np.random.default_rng(seed).permutation(docs)[:n_val]
        in_val = np.isin(self._meta[:, 0], val_docs)
        keep = np.ones(self.n_tokens, dtype=bool) if keep_outliers else ~self.outliers(layer)
        return StoreView(self, layer, ~in_val & keep), StoreView(self, layer, in_val & keep)


class StoreView:
    """The rows of one layer selected by a mask (e.g. the training documents), served as float32 tensors.

    Rows are addressed by *view position* 0..n_rows-1 in store order. ``rows(limit)`` and ``meta(limit)``
    with the same ``limit`` and ``seed`` select the same positions, so they line up row for row.
    """

    def __init__(self, store: ActivationStore, layer: Key, mask: np.ndarray, *,
                 buffer_rows: int = 65536, block_rows: int = 256):
        self.store = store
        self.layer = layer
        self.dim = store.dim
        self.buffer_rows = buffer_rows
        self.block_rows = block_rows
        self._arrays = store.layer_shards(layer)
        # Runs of consecutive selected rows, as (shard, start, stop); documents are contiguous in a store.
        runs = []
        for s, (lo, hi) in enumerate(zip(store._offsets[:-1], store._offsets[1:])):
            m = np.concatenate([[False], mask[lo:hi], [False]])
            edges = np.flatnonzero(np.diff(m.astype(np.int8)))
            runs.extend((s, int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]))
        self._runs = np.asarray(runs, dtype=np.int64).reshape(-1, 3)
        self._run_starts = np.concatenate([[0], np.cumsum(self._runs[:, 2] - self._runs[:, 1])])
        self.n_rows = int(self._run_starts[-1])
        self._global = np.flatnonzero(mask)  # store row index of each view position

    def at(self, key: Key) -> "StoreView":
        """The same rows of another layer or site of the store: batches and rows line up with this view's
        (same mask, same buffer settings, so the same shuffle), e.g. transcoder inputs and targets."""
        return StoreView(self.store, key, np.isin(np.arange(self.store.n_tokens), self._global),
                         buffer_rows=self.buffer_rows, block_rows=self.block_rows)

    @property
    def doc_indices(self) -> np.ndarray:
        """Corpus indices of the documents in this view."""
        return np.unique(self.store.meta[self._global, 0])

    def n_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return self.n_rows // batch_size if drop_last else -(-self.n_rows // batch_size)

    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, *, drop_last: bool = False,
                start: int = 0) -> Iterator[torch.Tensor]:
        """Shuffled float32 batches ``[batch_size, d]`` covering every row exactly once per epoch (the last
        batch is smaller unless ``drop_last``). Deterministic given (epoch, seed); ``start`` skips that many
        batches without reading them, for resuming a run mid-epoch.

        Shuffling buffer: the view is cut into blocks of ``block_rows`` consecutive rows; blocks are read
        in a random order into a buffer of about ``buffer_rows`` rows, which is shuffled and served, so a
        batch mixes tokens from many documents while reads stay sequential and memory stays bounded.
        """
        if batch_size < 1:
            raise BitlensError("batch size must be >= 1")
        rng = np.random.default_rng([seed, epoch])
        blocks = self._blocks()[rng.permutation(len(self._blocks()))] if self.n_rows else np.zeros((0, 3), np.int64)
        sizes = blocks[:, 2] - blocks[:, 1]
        groups, current, filled = [], [], 0
        for i, size in enumerate(sizes):
            if current and filled + size > self.buffer_rows:
                groups.append(current)
                current, filled = [], 0
            current.append(i)
            filled += int(size)
        if current:
            groups.append(current)
        skip = start * batch_size
        position = 0  # view-epoch position of the first row of the current group
        carry = np.zeros((0, self.dim), dtype=np.float32)
        buffer = None  # one shuffling buffer for every group (each batch is a copy of its rows)
        for group in groups:
            n = int(sizes[group].sum())
            perm = rng.permutation(n)  # drawn for every group so skipping does not change later groups
            if position + n <= skip:
                position += n
                continue
            # the buffer stays in the store's dtype; each batch gathers its rows and casts them (exact), so the
            # group is copied once (not concatenated, cast and permuted whole: 5x the memory at float16)
            if buffer is None:
                rows = max(int(sizes[g].sum()) for g in groups)
                buffer = np.empty((rows, self.dim), dtype=self._arrays[int(blocks[group[0], 0])].dtype)
            raw = read_blocks(self._arrays, blocks[group], buffer)
            if position < skip:
                perm = perm[skip - position:]
            position += n
            i = 0
            if len(carry):  # the rows left over from the previous group open the next batch
                i = min(batch_size - len(carry), len(perm))
                carry = np.concatenate([carry, raw[perm[:i]].astype(np.float32, copy=False)])
                if len(carry) < batch_size:
                    continue
                yield torch.from_numpy(carry)
            full = i + (len(perm) - i) // batch_size * batch_size
            for j in range(i, full, batch_size):
                # torch's float16 -> float32 cast is vectorised (about 5x numpy's astype here); both are exact
                yield torch.from_numpy(raw[perm[j:j + batch_size]]).float()
            carry = raw[perm[full:]].astype(np.float32, copy=False)
        if len(carry) and not drop_last:
            yield torch.from_numpy(np.ascontiguousarray(carry))

    def _blocks(self) -> np.ndarray:
        """``[n_blocks, 3]`` (shard, start, stop) blocks of at most ``block_rows`` rows, in store order."""
        if not hasattr(self, "_block_cache"):
            out = []
            for s, a, b in self._runs:
                for lo in range(a, b, self.block_rows):
                    out.append((s, lo, min(lo + self.block_rows, b)))
            self._block_cache = np.asarray(out, dtype=np.int64).reshape(-1, 3)
        return self._block_cache

    def positions(self, limit: int | None = None, seed: int = 0) -> np.ndarray:
        """View positions selected by ``rows``/``meta``: all (``limit`` None or >= n_rows) or a seeded sorted
        random sample of ``limit`` positions without replacement."""
        if limit is None or limit >= self.n_rows:
            return np.arange(self.n_rows)
        return np.sort(np.random.default_rng(seed).choice(self.n_rows, size=limit, replace=False))

    def rows(self, limit: int | None = None, seed: int = 0) -> torch.Tensor:
        """Float32 ``[n, d]`` activations at ``positions(limit, seed)``, in view order."""
        pos = self.positions(limit, seed)
        if len(pos) == self.n_rows:
            if not len(self._runs):
                return torch.zeros((0, self.dim))
            return torch.from_numpy(read_blocks(self._arrays, self._runs)).float()
        store_rows = self._global[pos]
        shard = np.searchsorted(self.store._offsets, store_rows, side="right") - 1
        out = np.empty((len(pos), self.dim), dtype=np.float32)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._arrays[s][store_rows[sel] - self.store._offsets[s]]
        release_pages(self._arrays)
        return torch.from_numpy(out)

    def meta(self, limit: int | None = None, seed: int = 0) -> TokenMeta:
        """Per-token metadata at ``positions(limit, seed)``, aligned with ``rows(limit, seed)``."""
        m = self.store.meta[self._global[self.positions(limit, seed)]]
        texts = self.store.token_texts
        return TokenMeta(doc=m[:, 0].copy(), chunk=m[:, 1].copy(), sentence=m[:, 2].copy(),
                         position=m[:, 3].copy(), token=m[:, 4].copy(), text=[texts[t] for t in m[:, 4]])
