"""The activation store's on-disk format: its constants, the reading of its manifest, and the small helpers the
writer (``store_writer.py``) and the reader (``store.py``) share.

Layout (everything opens with plain numpy, ``np.load(..., allow_pickle=False)``)::

    STORE/manifest.json             settings, shard list (rows, resume cursor), counts, statistics
    STORE/documents.jsonl           one record per corpus document: index, id, order, metadata
    STORE/tokens.json               decoded text of every token id (list index = token id)
    STORE/shards/000000/layer_6.npy       float16|float32 [rows, d]  activations of layer 6
    STORE/shards/000000/layer_6.norm.npy  float32 [rows]             their L2 norms (before the dtype cast)
    STORE/shards/000000/layer_6.sum.npy   float64 [d]                their sum, for the store mean
    STORE/shards/000000/meta.npy          int32 [rows, 5]            doc, chunk, sentence, position, token id
    STORE/shards/000000/mlp_in_6.npy      (optional named sites, same three files per site as a layer)

Besides residual layers (ints, ``hidden_states[L]``), a store can hold named **sites** (``mlp_in.L``: the input of
block L's MLP, i.e. the post-attention-norm output; ``mlp_out.L``: that MLP's output), listed under ``sites`` in the
manifest. Stores written before sites existed have no ``sites`` key and read as having none.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io import BitlensError, read_json_object

FORMAT = "bitlens-activation-store"
FORMAT_VERSION = 1
META_COLUMNS = ("doc", "chunk", "sentence", "position", "token")
N_META = len(META_COLUMNS)
OUTLIER_FACTOR = 10.0  # a row is an outlier when its norm exceeds this many times the median norm
_STORE_DTYPES = {"float16": np.float16, "float32": np.float32}

SITE_KINDS = ("mlp_in", "mlp_out")

#: a residual layer (int) or a named site such as "mlp_in.15"
Key = int | str


def parse_site(site: str) -> tuple[str, int]:
    """``"mlp_in.15"`` -> ("mlp_in", 15); BitlensError for anything else."""
    kind, _, layer = str(site).partition(".")
    if kind not in SITE_KINDS or not layer.isdigit():
        raise BitlensError(f"unknown site {site!r}: use mlp_in.L or mlp_out.L (L = block index)")
    return kind, int(layer)


def _check_sites(sites: list[str]) -> list[str]:
    for site in sites:
        parse_site(site)
    return list(sites)


def _layer_file(layer: Key, kind: str = "") -> str:
    stem = f"layer_{layer}" if isinstance(layer, int) else str(layer).replace(".", "_")
    return f"{stem}{'.' + kind if kind else ''}.npy"


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise BitlensError(f"activation store {path} does not exist")
    file = path / "manifest.json"
    if not file.is_file():
        raise BitlensError(f"{path} has no manifest.json: not an activation store")
    manifest = read_json_object(file)
    if manifest.get("format") != FORMAT:
        raise BitlensError(f"{file} is not a bitlens activation store manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BitlensError(f"{file} has format version {manifest.get('format_version')}; "
                           f"this bitlens reads version {FORMAT_VERSION}")
    return manifest


_EXPONENT = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000)}


def _all_finite(block: np.ndarray) -> bool:
    """No NaN or inf in ``block``: an IEEE value is non-finite exactly when its exponent bits are all ones, and
    testing the bits is about 5x faster than np.isfinite on float16 (0.12 s vs 0.62 s for the 230 MB demo store)."""
    if block.dtype in _EXPONENT and block.flags.c_contiguous:
        bits, mask = _EXPONENT[block.dtype]
        return not ((block.view(bits) & mask) == mask).any()
    return bool(np.isfinite(block).all())


def _describe(key: Key) -> str:
    return f"layer {key}" if isinstance(key, int) else f"site {key}"


def release_pages(arrays: list[np.ndarray]) -> None:
    """Drop the pages of memory-mapped arrays from this process's resident set. They stay in the page cache, so
    reading them again costs no disk I/O; without this, every page a pass over a store has touched counts in the
    process's RSS until the array is closed, so memory would grow with the number of stored tokens."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    for array in arrays:
        mapped = getattr(array, "_mmap", None)
        if mapped is not None and advice is not None:
            try:
                mapped.madvise(advice)
            except (OSError, ValueError):  # a platform without it, or a closed map: only memory is at stake
                pass


def _whole_file_map(array: np.ndarray) -> bool:
    """Whether ``array`` is a C-ordered memory map of a whole .npy file's data (what ``np.load(mmap_mode=...)``
    returns), so a row's byte offset in the file is ``array.offset + row * row bytes``."""
    filename, offset = getattr(array, "filename", None), getattr(array, "offset", None)
    if filename is None or offset is None or not array.flags.c_contiguous:
        return False
    try:
        return os.path.getsize(filename) == offset + array.nbytes
    except OSError:
        return False


def read_blocks(arrays: list[np.ndarray], blocks: np.ndarray, buffer: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``blocks`` [n, 3] (array index, start row, stop row), concatenated in that order; in the first
    rows of ``buffer`` when it is given and large enough (a fresh array of tens of MB costs a page fault per 4 KB
    page on every call, as the allocator returns it to the system when it is freed).

    From memory-mapped .npy files the blocks are read with ``os.preadv`` straight into the result: no page faults
    and nothing left in this process's resident set. Reading a shuffling buffer's 256 random blocks (64k rows of
    the demo store, 74 MB) took 0.021-0.025 s this way, against 0.02-0.20 s by slicing the maps (issue 18,
    fourteenth session). Other arrays (or a platform without ``preadv``) are sliced and concatenated."""
    if len(blocks) == 0:
        return np.zeros((0, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
    used = np.unique(blocks[:, 0])
    if not hasattr(os, "preadv") or not all(_whole_file_map(arrays[s]) for s in used):
        out = np.concatenate([arrays[s][a:b] for s, a, b in blocks])
        release_pages(arrays)
        return out
    first = arrays[int(used[0])]
    row_bytes = first.dtype.itemsize * int(np.prod(first.shape[1:], dtype=np.int64))
    n = int((blocks[:, 2] - blocks[:, 1]).sum())
    fits = (buffer is not None and buffer.dtype == first.dtype and buffer.shape[1:] == first.shape[1:]
            and len(buffer) >= n and buffer.flags.c_contiguous)
    out = buffer[:n] if fits else np.empty((n, *first.shape[1:]), dtype=first.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    files = {int(s): os.open(arrays[s].filename, os.O_RDONLY) for s in used}
    try:
        pos = 0
        for s, a, b in blocks:
            size = int(b - a) * row_bytes
            target = view[pos:pos + size]
            done = 0
            while done < size:  # preadv may return short (signals, very large reads)
                got = os.preadv(files[int(s)], [target[done:]], arrays[s].offset + int(a) * row_bytes + done)
                if got <= 0:
                    raise OSError(f"{arrays[s].filename}: unexpected end of file")
                done += got
            pos += size
    finally:
        for fd in files.values():
            os.close(fd)
    return out
