"""Code files of multi-bit coders (ours, ``coders/multibit.py``): each unit's level index, k bits per unit.

Version 2 of the ``.blc`` format (``compression.py`` holds version 1, the 1-bit files, unchanged). The header is
version 1's 32 bytes followed by the bits per unit::

    offset  size  field
    0       8     magic  b"BLCODES\\0"
    8       4     uint32 version (2)
    12      4     uint32 kind: 0 = packed, 1 = sparse
    16      8     uint64 n, number of vectors
    24      4     uint32 width, code size d'
    28      4     uint32 index_bits b (sparse: bits per stored index; packed: 0)
    32      4     uint32 bits_per_unit k (levels 0 .. 2^k - 1)
    36      ...   payload

    packed payload: the n * d' levels in row-major order, each a k-bit big-endian field, concatenated; the last
                    byte is zero-padded
    sparse payload: reference levels (each unit's most frequent level, lowest on ties), d' k-bit fields, zero-padded
                    to a byte; counts, n uint32: how many units of each vector differ from the reference; then one
                    (b + k)-bit field per differing unit, index * 2^k + level, in vector order, ascending index
                    within a vector; the last byte is zero-padded
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..io import BitlensError, atomic_path
from .compression import HEADER, MAGIC, PACKED, SPARSE, _pack_uints, _unpack_uints, decode_codes, index_bits, write_codes

LEVEL_VERSION = 2
BITS = struct.Struct("<I")


def reference_levels(levels: np.ndarray, bits: int) -> np.ndarray:
    """Most frequent level of each unit (uint8 [d']), the lowest one on ties."""
    counts = np.stack([(levels == v).sum(0) for v in range(1 << bits)])  # [L, d']
    return counts.argmax(0).astype(np.uint8)


def _check(levels: np.ndarray, bits: int) -> np.ndarray:
    levels = np.asarray(levels)
    if levels.ndim != 2 or levels.shape[1] == 0:
        raise BitlensError(f"level codes must be a 2-D [n, d'] array, got shape {levels.shape}")
    if not 1 <= bits <= 8:
        raise BitlensError(f"bits per unit must be in 1..8, got {bits}")
    if levels.size and (levels.min() < 0 or levels.max() >= 1 << bits):
        raise BitlensError(f"levels must be in 0..{(1 << bits) - 1}")
    return levels.astype(np.uint8)


def encode_levels_packed(levels: np.ndarray, bits: int) -> bytes:
    levels = _check(levels, bits)
    n, width = levels.shape
    return (HEADER.pack(MAGIC, LEVEL_VERSION, PACKED, n, width, 0) + BITS.pack(bits)
            + _pack_uints(levels.ravel(), bits))


def encode_levels_sparse(levels: np.ndarray, bits: int) -> bytes:
    levels = _check(levels, bits)
    n, width = levels.shape
    ref = reference_levels(levels, bits)
    diff = levels != ref
    counts = diff.sum(1).astype("<u4")
    rows, units = np.nonzero(diff)
    b = index_bits(width)
    fields = (units.astype(np.uint64) << np.uint64(bits)) | levels[rows, units].astype(np.uint64)
    return (HEADER.pack(MAGIC, LEVEL_VERSION, SPARSE, n, width, b) + BITS.pack(bits) + _pack_uints(ref, bits)
            + counts.tobytes() + _pack_uints(fields, b + bits))


def decode_level_codes(data: bytes) -> tuple[np.ndarray, int]:
    """(levels uint8 [n, d'], bits per unit) from the bytes of a version-2 file of either kind."""
    if len(data) < HEADER.size + BITS.size:
        raise BitlensError("not a bitlens level-code file: too short for its header")
    magic, version, kind, n, width, b = HEADER.unpack_from(data)
    (bits,) = BITS.unpack_from(data, HEADER.size)
    if magic != MAGIC or version != LEVEL_VERSION:
        raise BitlensError("not a bitlens level-code file (bad magic bytes or version)")
    if not 1 <= bits <= 8:
        raise BitlensError(f"level-code file states {bits} bits per unit; must be 1..8")
    body = np.frombuffer(data, dtype=np.uint8, offset=HEADER.size + BITS.size)
    if kind == PACKED:
        if len(body) != -(-n * width * bits // 8):
            raise BitlensError(f"code file is truncated or padded: {len(body)} payload bytes for {n} x {width} "
                               f"levels of {bits} bits")
        return _unpack_uints(body, n * width, bits).reshape(n, width).astype(np.uint8), bits
    if kind != SPARSE:
        raise BitlensError(f"unknown code file kind {kind}")
    ref_bytes = -(-width * bits // 8)
    if len(body) < ref_bytes + 4 * n:
        raise BitlensError("code file is truncated")
    ref = _unpack_uints(body[:ref_bytes], width, bits).astype(np.uint8)
    counts = body[ref_bytes:ref_bytes + 4 * n].view("<u4").astype(np.int64)
    total = int(counts.sum())
    packed = body[ref_bytes + 4 * n:]
    if len(packed) != -(-total * (b + bits) // 8):
        raise BitlensError("code file is truncated or padded: index payload has the wrong length")
    fields = _unpack_uints(packed, total, b + bits)
    units, values = fields >> bits, fields & ((1 << bits) - 1)
    if total and units.max() >= width:
        raise BitlensError("code file holds an index beyond the code width")
    levels = np.tile(ref, (n, 1))
    levels[np.repeat(np.arange(n), counts), units] = values
    return levels, bits


def code_file_bits(path: str | Path) -> int:
    """Bits per unit a code file states: 1 for version-1 (binary) files, k for version-2 level files."""
    with open(path, "rb") as f:
        head = f.read(HEADER.size + BITS.size)
    if len(head) < HEADER.size or head[:8] != MAGIC:
        raise BitlensError(f"{path}: not a bitlens code file")
    if HEADER.unpack_from(head)[1] != LEVEL_VERSION:
        return 1
    if len(head) < HEADER.size + BITS.size:
        raise BitlensError(f"{path}: too short for its header")
    return BITS.unpack_from(head, HEADER.size)[0]


def write_any_codes(path: str | Path, codes: np.ndarray, kind: str, bits_per_unit: int = 1) -> int:
    """Write bits (k = 1, a version-1 file) or levels (k > 1, version 2) as ``kind`` atomically; returns bytes."""
    if bits_per_unit == 1:
        return write_codes(path, codes, kind)
    data = (encode_levels_packed if kind == "packed" else encode_levels_sparse)(codes, bits_per_unit)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return len(data)


def read_any_codes(path: str | Path) -> tuple[np.ndarray, int]:
    """(codes uint8 [n, d'], bits per unit) from a file of either version."""
    path = Path(path)
    if not path.is_file():
        raise BitlensError(f"code file {path} does not exist")
    if code_file_bits(path) == 1:
        return decode_codes(path.read_bytes()), 1
    return decode_level_codes(path.read_bytes())
