"""The activation store's writer: appends rows, commits shards atomically, resumes an interrupted extraction.

The layout it writes is described in ``store_format.py``. A shard folder is written under a temporary name and
renamed into place, then the manifest (also written atomically) lists it with the resume cursor (document position
in the extraction order, chunk): a shard is either fully there and listed, or ignored and removed on resume. So an
interrupted extraction resumes after its last listed shard and never stores a token twice.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io import BitlensError, atomic_dir, check_out_dir, write_json, write_text
from .store_format import (FORMAT, FORMAT_VERSION, META_COLUMNS, N_META, OUTLIER_FACTOR, _STORE_DTYPES, Key,
                           _check_sites, _describe, _layer_file, _read_manifest)

_F16_MAX = float(np.finfo(np.float16).max)


def _normalise(data: Any) -> Any:
    """JSON round trip, so tuples/numpy scalars compare equal to what a manifest holds."""
    return json.loads(json.dumps(data, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


class StoreWriter:
    """Appends activation rows to a store, committing a shard every ``shard_rows`` rows (whole batches).

    Use :meth:`open` (new or resumed store), then :meth:`add` per batch and :meth:`finish` once.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.layers: list[int] = manifest["layers"]
        self.keys: list[Key] = [*self.layers, *manifest.get("sites", [])]
        self.np_dtype = _STORE_DTYPES[manifest["dtype"]]
        self._buffer: dict[Key, list[np.ndarray]] = {key: [] for key in self.keys}
        self._meta: list[np.ndarray] = []
        self._buffered = 0
        self._pending = {"special": 0, "first": 0, "sequences": 0}
        self._cursor = tuple(manifest["shards"][-1]["cursor"]) if manifest["shards"] else (0, 0)

    @classmethod
    def open(cls, path: str | Path, *, settings: dict[str, Any], layers: list[int], dim: int, dtype: str,
             shard_rows: int, documents: Callable[[], list[dict]], token_texts: Callable[[], list[str]],
             overwrite: bool = False, sites: list[str] | None = None) -> "StoreWriter":
        """Create the store, or resume it if it exists with identical ``settings``.

        ``documents`` and ``token_texts`` are called only when a new store is created.
        """
        path = check_out_dir(path)
        if dtype not in _STORE_DTYPES:
            raise BitlensError(f"store dtype must be float16 or float32, not {dtype!r}")
        settings = _normalise(settings)
        manifest_path = path / "manifest.json"
        if manifest_path.is_file():
            old = _read_manifest(path)
            if old.get("settings") == settings:
                writer = cls(path, old)
                writer._remove_uncommitted()
                return writer
            if not overwrite:
                keys = sorted(k for k in set(settings) | set(old.get("settings", {}))
                              if settings.get(k) != old.get("settings", {}).get(k))
                raise BitlensError(f"store {path} was made with different settings ({', '.join(keys)}); "
                                   "overwrite it or choose another folder")
            shutil.rmtree(path)
        elif path.exists() and any(path.iterdir()):
            raise BitlensError(f"{path} exists and is not an activation store; choose an empty or new folder")
        path.mkdir(parents=True, exist_ok=True)
        docs = documents()
        write_text(path / "documents.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
        write_text(path / "tokens.json", json.dumps(token_texts()))
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": False,
                    "settings": settings, "layers": layers, "sites": _check_sites(sites or []),
                    "dim": dim, "dtype": dtype,
                    "shard_rows": shard_rows, "meta_columns": list(META_COLUMNS), "n_documents": len(docs),
                    "shards": []}
        write_json(manifest_path, manifest)
        return cls(path, manifest)

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def cursor(self) -> tuple[int, int]:
        """Where extraction resumes: (document position in the extraction order, chunk in it)."""
        return self._cursor  # type: ignore[return-value]

    @property
    def n_tokens(self) -> int:
        """Rows committed plus rows buffered."""
        return sum(s["rows"] for s in self.manifest["shards"]) + self._buffered

    def add(self, acts: dict[Key, np.ndarray], meta: np.ndarray, *, cursor: tuple[int, int],
            excluded: dict[str, int], sequences: int, max_tokens: int | None = None) -> bool:
        """Buffer one batch: ``acts[L]`` float32 ``[n, d]`` and ``meta`` int32 ``[n, 5]`` (META_COLUMNS); ``cursor`` is where
        extraction continues after this batch. Commits a shard when enough rows are buffered.
        Returns True when ``max_tokens`` is reached (rows past it are dropped)."""
        n = len(meta)
        done = False
        if max_tokens is not None and self.n_tokens + n >= max_tokens:
            n = max_tokens - self.n_tokens
            done = True
        for key in self.keys:
            self._refuse_non_finite(key, acts[key][:n], meta[:n])
        for key in self.keys:
            self._buffer[key].append(acts[key][:n])
        self._meta.append(meta[:n])
        self._buffered += n
        for key, value in excluded.items():
            self._pending[key] += value
        self._pending["sequences"] += sequences
        self._cursor = cursor
        if self._buffered and (self._buffered >= self.manifest["shard_rows"] or done):
            self._commit_shard()
        return done

    def finish(self) -> dict[str, Any]:
        """Commit buffered rows, compute statistics over all shards and mark the store complete."""
        if self._buffered:
            self._commit_shard()
        shards = self.manifest["shards"]
        n = sum(s["rows"] for s in shards)
        if n == 0:
            raise BitlensError(f"no tokens were extracted into {self.path}: the corpus is too short for the settings")
        final = {**self.manifest, "complete": True, "n_tokens": n, "n_sequences": sum(s["sequences"] for s in shards),
                 "excluded": {k: sum(s["excluded"][k] for s in shards) for k in ("special", "first")},
                 "stats": {str(key): self._layer_stats(key, n) for key in self.keys}}
        with self._disk_full(f"the final manifest needs about {len(json.dumps(final, default=str))} bytes", n):
            write_json(self.path / "manifest.json", final)
        self.manifest = final
        return self.manifest

    # -- internals

    def _refuse_non_finite(self, key: Key, rows: np.ndarray, meta: np.ndarray) -> None:
        """A NaN or inf row would poison every mean, loss and checkpoint made from the store: refuse it, naming
        the document and position it came from (nothing of the batch is stored)."""
        bad = ~np.isfinite(rows).all(axis=1)
        if not bad.any():
            return
        i = int(np.argmax(bad))
        doc, pos = int(meta[i, 0]), int(meta[i, 3])
        name = ""
        try:
            lines = (self.path / "documents.jsonl").read_text().splitlines()
            name = f" ({json.loads(lines[doc])['id']})" if 0 <= doc < len(lines) else ""
        except (OSError, ValueError, KeyError):
            pass
        raise BitlensError(f"{_describe(key)}: the model produced non-finite values (NaN or inf) at document "
                           f"{doc}{name}, position {pos} ({int(bad.sum())} such rows in the batch); refusing to "
                           f"store them: {self.n_tokens - self._buffered} tokens committed in {self.path} are kept")

    def _shard_bytes(self, rows: int) -> int:
        """Bytes one shard of ``rows`` rows takes on disk (activations, norms, sums, metadata, .npy headers)."""
        per_key = rows * self.manifest["dim"] * np.dtype(self.np_dtype).itemsize + rows * 4 + \
            self.manifest["dim"] * 8 + 3 * 128
        return len(self.keys) * per_key + rows * N_META * 4 + 128

    def _commit_shard(self) -> None:
        rows = self._buffered
        with self._disk_full(f"the next shard needs about {self._shard_bytes(rows)} bytes ({rows} tokens)",
                             self.n_tokens - rows):
            self._write_shard()

    @contextlib.contextmanager
    def _disk_full(self, need: str, kept: int):
        """Turn a full disk (or quota) into one line naming the folder and the space needed; what was committed
        before stays committed (shards and the manifest are written atomically)."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            free = shutil.disk_usage(self.path).free
            raise BitlensError(f"no space left on the device holding {self.path}: {need}, {free} bytes are free; "
                               f"the {kept} tokens already committed are kept: free some space and rerun the "
                               "same command to resume") from None

    def _write_shard(self) -> None:
        index = len(self.manifest["shards"])
        name = f"{index:06d}"
        meta = np.concatenate(self._meta).astype(np.int32)
        with atomic_dir(self.path / "shards" / name) as tmp:
            for layer in self.keys:
                rows = np.concatenate(self._buffer[layer]).astype(np.float32, copy=False)
                if self.np_dtype is np.float16 and rows.size and np.abs(rows).max() > _F16_MAX:
                    raise BitlensError(f"layer {layer} activations exceed the float16 range; store them as float32")
                np.save(tmp / _layer_file(layer), rows.astype(self.np_dtype))
                np.save(tmp / _layer_file(layer, "norm"), np.linalg.norm(rows, axis=1).astype(np.float32))
                np.save(tmp / _layer_file(layer, "sum"), rows.sum(axis=0, dtype=np.float64))
            np.save(tmp / "meta.npy", meta)
        self.manifest["shards"].append({
            "name": name, "rows": int(len(meta)), "cursor": list(self._cursor),
            "sequences": self._pending["sequences"],
            "excluded": {"special": self._pending["special"], "first": self._pending["first"]},
            "docs": [int(meta[:, 0].min()), int(meta[:, 0].max())] if len(meta) else [],
            "finite": True,  # add() refuses NaN and inf; readers check again (a file may be edited later)
        })
        write_json(self.path / "manifest.json", self.manifest)  # the shard counts from here on
        self._buffer = {key: [] for key in self.keys}
        self._meta, self._buffered = [], 0
        self._pending = {"special": 0, "first": 0, "sequences": 0}

    def _remove_uncommitted(self) -> None:
        """Delete shard folders the manifest does not list (written, then interrupted before listing)
        and leftovers of interrupted atomic writes."""
        listed = {s["name"] for s in self.manifest["shards"]}
        shard_root = self.path / "shards"
        if shard_root.is_dir():
            for entry in shard_root.iterdir():
                if entry.name not in listed:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def _layer_stats(self, layer: Key, n: int) -> dict[str, Any]:
        total = np.zeros(self.manifest["dim"], dtype=np.float64)
        norms = []
        for shard in self.manifest["shards"]:
            folder = self.path / "shards" / shard["name"]
            total += np.load(folder / _layer_file(layer, "sum"), allow_pickle=False)
            norms.append(np.load(folder / _layer_file(layer, "norm"), allow_pickle=False))
        norm = np.concatenate(norms).astype(np.float64)
        mean = total / n
        mean_sq_norm = float(np.mean(norm ** 2))
        median = float(np.median(norm))
        return {"mean": mean.tolist(), "mean_sq_norm": mean_sq_norm,
                "variance": mean_sq_norm - float(mean @ mean),  # E|x - mean|^2, the FVU denominator
                "norm_median": median, "norm_p99": float(np.quantile(norm, 0.99)), "norm_max": float(norm.max()),
                "outlier_factor": OUTLIER_FACTOR, "outliers": int((norm > OUTLIER_FACTOR * median).sum())}
