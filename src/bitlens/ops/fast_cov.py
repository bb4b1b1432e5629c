"""The covariance penalty of binary codes and its gradient, exactly, without the d' x d' float covariance.

Notation: h [B, m] bits, n = 1^T h [m] unit counts, l = h 1 [B] row popcounts, a = 1[n > 0] active units,
G = h^T h [m, m] co-occurrence counts. The unbiased covariance is C = q / (B (B - 1)) with the *integer* matrix
q = B G - n n^T, so its signs are exact: S = sign(q) with a zero diagonal. Then

    D      = sum_{i != j} |C_ij| = sum_bj (hS)_bj (B h_bj - n_j) / (B (B - 1))       (q_ij S_ij = |q_ij|)
    dD/dh  = 2 / (B - 1) * (hS - 1 colmean(hS))                                       (autograd of the reference)

so everything follows from the integer matrix hS [B, m]. Two exact ways to get it:

* dense: the Gram matrix in column blocks, only its lower block triangle (it is symmetric), each block turned into
  signs at once and multiplied back with int8 GEMMs; the d' x d' matrix is never held whole.
* sparse (trained codes, few bits per row): with R = S + a a^T - diag(a), R_ij = 1 + sign(q_ij) where G_ij > 0 and
  0 elsewhere, and T = 2 G_offdiag - R,  hS = h o (1 - 2n) + 2 K h - l a^T - h T  with K = h h^T [B, B] the row
  overlaps: two int8 products of B^2 m instead of B m^2. T is non-zero only for pairs seen together in two or more
  rows (found from the row pairs with K_bc >= 2) and for pairs with a frequent unit (n_i^2 >= B; a dense Gram block
  against all units). Only the active bits and the repeated pairs are ever listed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import fused
from .bit_products import count_mm, int8_gemm_is_fast, int_mm

VIEW_GRAM_MAX_WIDTH = 6144  # widest code whose CPU Gram reads h8^T as a view (see dense_sign_product)
GRAM_TILE_ROWS = 2048  # rows of an int32 Gram tile [tile, DENSE_BLOCK] (8 MB): see dense_sign_product
DENSE_BLOCK = 1024  # columns of the Gram matrix per block: big enough for GEMM efficiency, small enough for cache


def dense_sign_product(h8: torch.Tensor, n: torch.Tensor, block: int = DENSE_BLOCK) -> torch.Tensor:
    """hS for any codes, via the lower block triangle of the Gram matrix.

    Args: h8 [B, m] int8 bits; n [m] int32 counts. Returns int32 [B, m].
    """
    b, m = h8.shape
    if not int8_gemm_is_fast(h8.device.type) and b * b < 2 ** 24:
        return _dense_sign_product_float(h8, n, block)
    wide = torch.int64 if b * b >= 2 ** 31 else torch.int32  # q = B G - n n^T must not overflow
    # the Gram's left factor: int_mm reads the column-major view as it lies on CPU, which measured faster than a
    # row-major copy up to ~6k units on an AVX-512/AMX Xeon (2.1 vs 3.0 ms for d' = 2304), not at 8192 (noisy)
    ht8 = h8.t() if h8.device.type == "cpu" and m <= VIEW_GRAM_MAX_WIDTH else h8.t().contiguous()  # [m, B]
    nq = n.to(wide)
    hs = torch.zeros(b, m, dtype=torch.int32, device=h8.device)
    for j0 in range(0, m, block):
        j1 = min(j0 + block, m)
        # S[j0:, J], GRAM_TILE_ROWS rows at a time: the int32 Gram tile stays at 8 MB where a whole column block of it
        # (33 MB at d' = 8192) was a fresh allocation each time. Measured on an AVX-512/AMX Xeon (BENCHMARKS.md,
        # issue 18), step / floor: d' = 8192 1.45-1.49 against 1.56-1.60 whole; d' = 2304 1.80-1.84 against 1.86-1.90;
        # tiles of 512 / 1024 / 4096 rows were no better
        s = torch.empty(m - j0, j1 - j0, dtype=torch.int8, device=h8.device)
        for i0 in range(j0, m, GRAM_TILE_ROWS):
            i1 = min(i0 + GRAM_TILE_ROWS, m)
            q = int_mm(ht8[i0:i1], h8[:, j0:j1]).to(wide)  # G[I, J]
            q.addr_(nq[i0:i1], nq[j0:j1], beta=b, alpha=-1)  # q = B G - n n^T, in place
            if i0 < j1:  # this tile crosses the diagonal of G[J, J]: (j0 + k, j0 + k) is at q[k - (i0 - j0), k]
                q[:, i0 - j0:].fill_diagonal_(0)
            s[i0 - j0:i1 - j0] = q.clamp_(-1, 1)
        hs[:, j0:j1] += int_mm(h8[:, j0:], s)
        if j1 < m:  # the mirrored upper block S[J, j1:] = S[j1:, J]^T
            hs[:, j1:] += int_mm(h8[:, j0:j1], s[j1 - j0:].t())
    return hs


def _dense_sign_product_float(h8: torch.Tensor, n: torch.Tensor, block: int) -> torch.Tensor:
    """``dense_sign_product`` through ``dense_sign_product_bits`` (fp32), as int32."""
    return dense_sign_product_bits(h8.float(), n.float(), block=block).to(torch.int32)


def dense_sign_product_bits(h: torch.Tensor, n: torch.Tensor, compiled: bool = False,
                            block: int = DENSE_BLOCK) -> torch.Tensor:
    """hS in fp32 throughout, for CPUs where the int8 GEMM is slow (``bit_products``), from fp32 bits.

    Exact: every entry of B G - n n^T lies in [-B^2, B^2] (B^2 < 2^24 is checked by callers) and every partial sum
    of h S is an integer of magnitude <= m < 2^24. Working in floats skips the int8/int32 <-> float copies of the
    m x m blocks, which cost as much as the GEMMs themselves when the products are fp32 anyway; the Gram's left
    factor is read transposed in place (no copy of h^T).
    Args: h [B, m] fp32 0/1; n [m] fp32 counts; compiled: fuse the sign pass (``fused.gram_signs``).
    Returns fp32 [B, m] (integers).
    """
    b, m = h.shape
    bt = torch.tensor(float(b), device=h.device)
    hs = torch.zeros(b, m, device=h.device)
    for j0 in range(0, m, block):
        j1 = min(j0 + block, m)
        q = h[:, j0:].t() @ h[:, j0:j1]  # G[j0:, J]
        s = fused.gram_signs(q, n[j0:], n[j0:j1], bt, compiled)  # S before its diagonal is cleared
        s[: j1 - j0].fill_diagonal_(0)
        hs[:, j0:j1].addmm_(h[:, j0:], s)
        if j1 < m:
            hs[:, j1:].addmm_(h[:, j0:j1], s[j1 - j0:].t())
    return hs


class RowLists(NamedTuple):
    """The ones of a 0/1 matrix [r, c], row by row."""

    rows: torch.Tensor
    """[nnz] row of each one (non-decreasing)."""
    cols: torch.Tensor
    """[nnz] column of each one, ascending within a row (embedding_bag's ``input``)."""
    offsets: torch.Tensor
    """[r] start of each row in ``cols`` (embedding_bag's ``offsets``)."""
    padded: torch.Tensor
    """[r, max ones per row] columns, each row sorted and padded with the sentinel c."""


def row_lists(h8: torch.Tensor, padded: bool = True) -> RowLists:
    """The ones of h8 [r, c] (any dtype, any strides) as row lists (``padded`` empty unless asked for)."""
    b, m = h8.shape
    idx = h8.nonzero()
    row, cols = idx[:, 0], idx[:, 1].contiguous()
    counts = torch.bincount(row, minlength=b)
    offsets = counts.cumsum(0) - counts
    if not padded:
        return RowLists(row, cols, offsets, cols.new_zeros(0, 0))
    width = int(counts.max()) if b else 0
    padded = torch.full((b, max(width, 1)), m, dtype=torch.int64, device=h8.device)
    padded[row, torch.arange(row.numel(), device=h8.device) - offsets[row]] = cols
    return RowLists(row, cols, offsets, padded)


def transposed_lists(lists: RowLists, cols: int) -> RowLists:
    """``row_lists(h.t(), padded=False)`` from ``lists`` = ``row_lists(h)`` of h [r, cols]: one stable sort of the
    ones' column indices instead of a scan of the whole (strided) transpose; the same lists, in the same order."""
    order = torch.argsort(lists.cols, stable=True)
    units = lists.cols[order]
    counts = torch.bincount(units, minlength=cols)
    return RowLists(units, lists.rows[order], counts.cumsum(0) - counts, units.new_zeros(0, 0))


def _within_group_pairs(group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All (s, t), s < t, of positions in a list sorted by ``group`` that share a group. Output-sized work."""
    size = torch.bincount(group, minlength=n_groups)
    start = size.cumsum(0) - size
    pos = torch.arange(group.numel(), device=group.device)
    partners = size[group] - 1 - (pos - start[group])
    src = torch.repeat_interleave(pos, partners)
    first = partners.cumsum(0) - partners
    dst = src + 1 + (torch.arange(src.numel(), device=group.device) - torch.repeat_interleave(first, partners))
    return src, dst


def repeated_pairs(bits: torch.Tensor, padded: torch.Tensor,
                   overlap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit pairs i < j seen together in at least two rows, with their count G_ij >= 2.

    Such a pair lies in the intersection of two rows b < c with overlap K_bc >= 2, and it lies in exactly
    C(G_ij, 2) of those row pairs; so intersect only those row pairs (sorted lists, searchsorted), pair up the
    shared units, and count.
    Args: bits [B, m] int8; padded [B, L] its sorted row lists (sentinel m); overlap [B, B] its row overlaps.
    Returns: i [P], j [P], g [P] (int64).
    """
    m = bits.shape[1]
    b_idx, c_idx = torch.triu(overlap >= 2, diagonal=1).nonzero(as_tuple=True)
    empty = torch.zeros(0, dtype=torch.int64, device=padded.device)
    if b_idx.numel() == 0:
        return empty, empty, empty
    # flat gathers (take, index_select): torch's multi-index gather was most of this function's time
    left = padded.index_select(0, b_idx)  # [R, L] the units of row b (sentinel m)
    table = torch.cat([bits, bits.new_zeros(bits.shape[0], 1)], 1)  # column m is the sentinel's: always off
    hit = torch.take(table, left + (c_idx * (m + 1)).unsqueeze(1))  # [R, L]: ... that are also on in row c
    where = hit.view(-1).nonzero().squeeze(1)  # grouped by row pair, units ascending within a group
    group, units = where // left.shape[1], torch.take(left, where)
    src, dst = _within_group_pairs(group, b_idx.numel())
    keys, pairs_of_rows = torch.unique(units[src] * m + units[dst], return_counts=True)
    g = ((1 + torch.sqrt(1 + 8 * pairs_of_rows.double())) / 2).round().long()  # C(g, 2) = pairs_of_rows
    return keys // m, keys % m, g


def sparse_sign_product(h8: torch.Tensor, n: torch.Tensor, l: torch.Tensor,
                        lists: RowLists | None = None) -> torch.Tensor:
    """hS for sparse codes through row overlaps and the few excess pairs (see the module docstring).

    Units with n_i^2 >= B ("frequent") are handled by a dense Gram block against all units; among the others
    n_i n_j < B <= B G_ij whenever G_ij >= 1, so their excess is T = 2 (G - 1) on pairs with G >= 2 only.
    Args: h8 [B, m] int8 bits; n [m] int32 counts; l [B] int32 popcounts; lists: ``row_lists`` of h8 when the
    caller has them.
    Returns int32 [B, m].
    """
    b, m = h8.shape
    if int(l.sum()) == 0:
        return torch.zeros(b, m, dtype=torch.int32, device=h8.device)
    ht8 = h8.t()  # int_mm reads a column-major view as it is: no copy
    overlap = int_mm(h8, ht8)  # K = h h^T [B, B]
    overlap.fill_diagonal_(0)  # its diagonal (the popcounts, often > 127) is added below, so int8 holds the rest
    hs = count_mm(overlap, h8).mul_(2)  # 2 (K - diag l) h
    lists = lists or row_lists(h8)
    # h o (1 - 2n + 2l): the diagonals of G and K and the diag(a) term, added only where h is on
    hs.view(-1).index_add_(0, lists.rows * m + lists.cols, (1 - 2 * n)[lists.cols] + 2 * l[lists.rows])
    hs.addr_(l, (n > 0).to(torch.int32), alpha=-1)  # - l a^T

    n64 = n.to(torch.int64)
    frequent = (n64 * n64 >= b).nonzero().squeeze(1)
    if frequent.numel():  # T[:, F] exactly from a dense block of the Gram matrix
        g = int_mm(ht8, h8[:, frequent].contiguous()).long()  # [m, F]
        q = b * g - n64[:, None] * n64[frequent][None]
        t = torch.where(g > 0, 2 * g - 1 - torch.sign(q), torch.zeros_like(g))
        t[frequent, torch.arange(frequent.numel(), device=h8.device)] = 0
        hf = h8.float()  # exact: integer sums far below 2^24
        hs[:, frequent] -= (hf @ t.float()).to(torch.int32)
        t[frequent] = 0  # the mirrored part T[F, rest] = T[rest, F]^T, without counting T[F, F] twice
        hs -= (hf[:, frequent] @ t.float().t()).to(torch.int32)
        rare = h8.clone()
        rare[:, frequent] = 0
        overlap = overlap - int_mm(h8[:, frequent].contiguous(), ht8[frequent].contiguous())
        padded = row_lists(rare).padded
    else:
        rare = h8
        padded = lists.padded

    i, j, g = repeated_pairs(rare, padded, overlap)
    if i.numel():  # hS[:, j] -= T_ij h[:, i] and the mirror, with T = 2 (G - 1), scattered over the rows of i / j
        _subtract_excess(hs, lists, torch.cat([i, j]), torch.cat([j, i]), (2 * (g - 1)).repeat(2))
    return hs


def _subtract_excess(hs: torch.Tensor, lists: RowLists, i: torch.Tensor, j: torch.Tensor, t: torch.Tensor) -> None:
    """hs -= h T for the sparse T given as entries (i, j, t), in place.

    Row b of hT is the sum of the rows of T of the units on in row b: every one of h (b, i) scatters the entries
    of T's row i into row b of hs. The work is the number of (one of h, entry of T) pairs, written straight into
    hs's row-major layout (a column formulation needed a transposed [m, B] pass over all of hs).
    Args: hs [B, m] int32; lists: ``row_lists`` of h (every unit with an entry in T listed where it is on).
    """
    m = hs.shape[1]
    order = torch.argsort(i, stable=True)
    tj, tt = j[order], t[order].to(hs.dtype)
    counts = torch.bincount(i, minlength=m)
    start = counts.cumsum(0) - counts
    per_one = counts[lists.cols]  # [nnz]: entries of T in the row of each one's unit
    src = torch.repeat_interleave(per_one)  # the one each (one, entry) pair comes from
    first = per_one.cumsum(0) - per_one
    entry = start[lists.cols[src]] + torch.arange(src.numel(), device=hs.device) - first[src]
    hs.view(-1).index_add_(0, lists.rows[src] * m + tj[entry], tt[entry], alpha=-1)


GATHER_BLOCK_FLOATS = 1 << 23  # rows of S held at once by ``gather_sign_product``: 32 MB of fp32 (d' = 2304: one block)
HALF_EXACT = 2048  # integers up to this magnitude, and all partial sums of them below it, are exact in fp16


def gather_sign_product(h: torch.Tensor, n: torch.Tensor, lists: RowLists, lists_t: RowLists, compiled: bool = False,
                        block_floats: int = GATHER_BLOCK_FLOATS) -> torch.Tensor:
    """hS for sparse codes where the bit products are fp32 GEMMs (no fast int8), by gathers instead of GEMMs.

    Row i of the Gram matrix is the sum of the rows of h in which unit i is on, and row b of hS is the sum of the
    rows of S of the units on in row b: two ``embedding_bag`` sums of B L0 rows of length m (L0 = bits on per row)
    instead of the 1.5 B m^2 multiply-adds of ``dense_sign_product``. S is built for a block of units at a time
    (at most ``block_floats`` entries), so memory stays bounded whatever m. Exact: all sums are integers below 2^24
    in fp32 (B^2 < 2^24 is checked by callers). The rows of S are gathered in fp16 when no row of h has more than
    2048 ones (every partial sum of row b of hS is an integer of magnitude <= its ones): half the memory traffic of
    the gather that dominates this function (on a 2-core AVX-512 EPYC at d' = 2304, 12.7 -> 10.8 ms).
    Args: h [B, m] fp32 0/1; n [m] fp32 counts; lists, lists_t: ``row_lists`` of h and of h^T.
    Returns fp32 [B, m] (integers).
    """
    b, m = h.shape
    bt = torch.tensor(float(b), device=h.device)
    ends = torch.cat([lists.offsets, lists.offsets.new_tensor([lists.cols.numel()])])
    half = b > 0 and int((ends[1:] - ends[:-1]).max()) <= HALF_EXACT
    hs = None
    step = max(1, block_floats // max(m, 1))
    unit_ends = torch.cat([lists_t.offsets, lists_t.offsets.new_tensor([lists_t.cols.numel()])])
    for i0 in range(0, m, step):
        i1 = min(i0 + step, m)
        lo, hi = int(unit_ends[i0]), int(unit_ends[i1])
        if lo == hi:  # no unit of this block is ever on: their rows of S never reach hS
            continue
        g = F.embedding_bag(lists_t.cols[lo:hi], h, lists_t.offsets[i0:i1] - lo, mode="sum")  # G[I, :]
        s = fused.gram_signs(g, n[i0:i1], n, bt, compiled)  # S[I, :] before its diagonal is cleared
        if half:
            s = s.half()
        s.diagonal(i0).zero_()
        if i0 == 0 and i1 == m:
            part = F.embedding_bag(lists.cols, s, lists.offsets, mode="sum")
        else:  # the ones of h in this block's columns, row by row
            keep = (lists.cols >= i0) & (lists.cols < i1)
            cols, rows = lists.cols[keep] - i0, lists.rows[keep]
            counts = torch.bincount(rows, minlength=b)
            part = F.embedding_bag(cols, s, counts.cumsum(0) - counts, mode="sum")
        hs = part.float() if hs is None else hs.add_(part)
    return torch.zeros(b, m, device=h.device) if hs is None else hs


def row_dots(hs: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """h_b . (hS)_b for each row b, exactly: hs [B, m] (int32 or fp32 integers), h [B, m] bits (any dtype) -> int64 [B].

    fp32 dot products over column chunks narrow enough that every partial sum is an integer of magnitude <= 2^24
    (|hS| < m per entry), added up in float64: 0.5 ms at 512 x 2304 on an AVX-512 Xeon where the int32 product
    with int8 bits took 2.5 ms (it first promotes the bits to int32; BENCHMARKS.md, issue 18)."""
    b, m = hs.shape
    hf, bits = hs.float(), h.float()
    width = max(1, fused.EXACT_FP32 // max(m, 1))
    if width >= m:
        return torch.linalg.vecdot(hf, bits).long()
    out = torch.zeros(b, dtype=torch.float64, device=hs.device)
    for c0 in range(0, m, width):
        out += torch.linalg.vecdot(hf[:, c0:c0 + width], bits[:, c0:c0 + width])
    return out.long()


def column_sums(hs: torch.Tensor) -> torch.Tensor:
    """1^T hS as int64 [m], exactly, from hs [B, m] int32: summed in int32 where |column| < B m < 2^31 (an int64
    sum first copies all of hs to int64: 0.55 vs 0.07 ms at 512 x 2304)."""
    b, m = hs.shape
    return hs.sum(0, dtype=torch.int32).long() if b * m < 2 ** 31 else hs.sum(0, dtype=torch.int64)


def penalty_from_sign_product(hs: torch.Tensor, h8: torch.Tensor, n: torch.Tensor, colsum: torch.Tensor | None = None,
                              lists: RowLists | None = None) -> torch.Tensor:
    """D = sum_{i != j} |C_ij| from hS, exactly (integer sums), as a float64 scalar.

    Args: hs [B, m] int32; h8 [B, m] int8; n [m] int32; colsum: hs.sum(0) (int64) if known; lists: row_lists(h8)
    for sparse bits (then hS is read only where h is on).
    """
    b, m = h8.shape
    if lists is not None:
        on = hs.view(-1)[lists.rows * m + lists.cols].sum(dtype=torch.int64)
    else:
        on = row_dots(hs, h8).sum(dtype=torch.int64)  # sum_b h_b . (hS)_b = sum_ij G_ij S_ij
    if colsum is None:
        colsum = column_sums(hs)
    cross = (colsum * n).sum()  # n^T S n
    return (b * on - cross).double() / (b * (b - 1))
