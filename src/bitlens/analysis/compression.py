"""Hidden states stored as BAE codes: a bit-packed file and a sparse file of bits that differ from a reference code.

File format (``.blc``, "bitlens codes"; everything little-endian; readable with numpy alone, see docs/compression.md)::

    offset  size  field
    0       8     magic  b"BLCODES\\0"
    8       4     uint32 version (1)
    12      4     uint32 kind: 0 = packed, 1 = sparse
    16      8     uint64 n, number of vectors
    24      4     uint32 width, code size d'
    28      4     uint32 index_bits b (sparse: bits per stored index; packed: 0)
    32      ...   payload

    (version 2, multi-bit level codes with k bits per unit stated in the header: see ``level_codes.py``)

    packed payload: n * ceil(d'/8) bytes, np.packbits(codes, axis=1) (bit order big: unit 0 is the high bit of byte 0)
    sparse payload: reference code, ceil(d'/8) bytes, np.packbits(ref)
                    counts, n uint32: how many bits of each vector differ from the reference
                    indices, sum(counts) unsigned integers of b bits each, bit-packed big-endian, concatenated in
                    vector order, ascending within a vector; the last byte is zero-padded

The reference is the rounded mean code, ref_j = 1 if the unit fires for more than half of the vectors, else 0
(the paper's scheme). A unit firing for exactly half of them gets 0 and its firings are stored as indices, so
decoding flips exactly the stored bits and is exact in every case. b = ceil(log2 d').
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from ..io import BitlensError, atomic_path

MAGIC = b"BLCODES\0"
VERSION = 1
PACKED, SPARSE = 0, 1
HEADER = struct.Struct("<8sIIQII")  # 32 bytes


def index_bits(width: int) -> int:
    return max(1, math.ceil(math.log2(width)))


def reference_code(codes: np.ndarray) -> np.ndarray:
    """Rounded mean code (uint8 [d']): 1 where the unit is on for strictly more than half of the rows."""
    return (2 * codes.sum(0, dtype=np.int64) > codes.shape[0]).astype(np.uint8)


def _pack_uints(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers as consecutive big-endian ``bits``-bit fields, zero-padded to a byte."""
    if len(values) == 0:
        return b""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    fields = ((values.astype(np.uint64)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(fields.ravel()).tobytes()


def _unpack_uints(data: np.ndarray, count: int, bits: int) -> np.ndarray:
    fields = np.unpackbits(data)[:count * bits].reshape(count, bits).astype(np.int64)
    return fields @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


def encode_packed(codes: np.ndarray) -> bytes:
    codes = _check_codes(codes)
    n, width = codes.shape
    return HEADER.pack(MAGIC, VERSION, PACKED, n, width, 0) + np.packbits(codes, axis=1).tobytes()


def encode_sparse(codes: np.ndarray, reference: np.ndarray | None = None) -> bytes:
    codes = _check_codes(codes)
    n, width = codes.shape
    ref = reference_code(codes) if reference is None else np.asarray(reference, dtype=np.uint8)
    diff = codes != ref
    counts = diff.sum(1).astype("<u4")
    indices = np.nonzero(diff)[1]  # row-major: vector order, ascending within a vector
    bits = index_bits(width)
    return (HEADER.pack(MAGIC, VERSION, SPARSE, n, width, bits) + np.packbits(ref).tobytes() + counts.tobytes()
            + _pack_uints(indices, bits))


def decode_codes(data: bytes) -> np.ndarray:
    """Codes uint8 [n, d'] from the bytes of either file kind."""
    if len(data) < HEADER.size:
        raise BitlensError("not a bitlens code file: too short for its header")
    magic, version, kind, n, width, bits = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BitlensError("not a bitlens code file (bad magic bytes)")
    if version == 2:
        raise BitlensError("a multi-bit level-code file (version 2): read it with bitlens.analysis.level_codes")
    if version != VERSION:
        raise BitlensError(f"code file version {version}; this bitlens reads version {VERSION}")
    body = np.frombuffer(data, dtype=np.uint8, offset=HEADER.size)
    row_bytes = -(-width // 8)
    if kind == PACKED:
        if len(body) != n * row_bytes:
            raise BitlensError(f"code file is truncated or padded: {len(body)} payload bytes for {n} x {width} bits")
        return np.unpackbits(body.reshape(n, row_bytes), axis=1, count=width)
    if kind != SPARSE:
        raise BitlensError(f"unknown code file kind {kind}")
    if len(body) < row_bytes + 4 * n:
        raise BitlensError("code file is truncated")
    ref = np.unpackbits(body[:row_bytes], count=width)
    counts = body[row_bytes:row_bytes + 4 * n].view("<u4").astype(np.int64)
    total = int(counts.sum())
    packed = body[row_bytes + 4 * n:]
    if len(packed) != -(-total * bits // 8):
        raise BitlensError("code file is truncated or padded: index payload has the wrong length")
    indices = _unpack_uints(packed, total, bits)
    if total and indices.max() >= width:
        raise BitlensError("code file holds an index beyond the code width")
    codes = np.tile(ref, (n, 1))
    rows = np.repeat(np.arange(n), counts)
    codes[rows, indices] ^= 1
    return codes


def write_codes(path: str | Path, codes: np.ndarray, kind: str) -> int:
    """Write codes as ``kind`` ('packed' or 'sparse') atomically; returns the file size in bytes."""
    data = encode_packed(codes) if kind == "packed" else encode_sparse(codes)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return len(data)


def read_codes(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise BitlensError(f"code file {path} does not exist")
    return decode_codes(path.read_bytes())


def _check_codes(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise BitlensError(f"codes must be a 2-D [n, d'] array, got shape {codes.shape}")
    if codes.size and not np.isin(codes, (0, 1)).all():
        raise BitlensError("codes must contain only 0 and 1")
    return codes.astype(np.uint8)
