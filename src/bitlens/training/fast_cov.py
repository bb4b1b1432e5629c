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
  0 elsewhere, and T = 2 G_offdiag - R (non-zero only for pairs seen together twice or more, or involving a very
  frequent unit),  hS = h o (1 - 2n) + 2 K h - l a^T - h T  with K = h h^T [B, B] the row overlaps. The two products
  with K cost B^2 m instead of B m^2 and T is tiny; only the co-occurring pairs are ever touched.
"""

from __future__ import annotations

import torch

from .bit_products import count_mm, int_mm

DENSE_BLOCK = 1024  # columns of the Gram matrix per block: big enough for GEMM efficiency, small enough for cache


def dense_sign_product(h8: torch.Tensor, n: torch.Tensor, block: int = DENSE_BLOCK) -> torch.Tensor:
    """hS for any codes, via the lower block triangle of the Gram matrix.

    Args: h8 [B, m] int8 bits; n [m] int32 counts. Returns int32 [B, m].
    """
    b, m = h8.shape
    wide = torch.int64 if b * b >= 2 ** 31 else torch.int32  # q = B G - n n^T must not overflow
    ht8 = h8.t().contiguous()  # [m, B]: row access for the Gram's left factor
    nq = n.to(wide)
    hs = torch.zeros(b, m, dtype=torch.int32, device=h8.device)
    for j0 in range(0, m, block):
        j1 = min(j0 + block, m)
        q = int_mm(ht8[j0:], h8[:, j0:j1]).to(wide)  # G[j0:, J]: this column block, rows on/below the diagonal
        q.addr_(nq[j0:], nq[j0:j1], beta=b, alpha=-1)  # q = B G - n n^T, in place
        q[: j1 - j0].fill_diagonal_(0)
        s = q.clamp_(-1, 1).to(torch.int8)  # S[j0:, J]
        hs[:, j0:j1] += int_mm(h8[:, j0:], s)
        if j1 < m:  # the mirrored upper block S[J, j1:] = S[j1:, J]^T
            hs[:, j1:] += int_mm(h8[:, j0:j1], s[j1 - j0:].t())
    return hs


def _excess_pairs(h8: torch.Tensor, n: torch.Tensor, b: int) -> torch.Tensor:
    """T = 2 G_offdiag - R as a sparse COO [m, m] float matrix, from the sparse Gram matrix of the bits."""
    m = h8.shape[1]
    hc = _csr(h8)
    gram = _csr(h8.t()) @ hc  # [m, m] CSR, values = co-occurrence counts (exact small integers)
    crow, col, g = gram.crow_indices(), gram.col_indices(), gram.values().to(torch.int64)
    row = torch.repeat_interleave(torch.arange(m, device=h8.device), crow.diff())
    n64 = n.to(torch.int64)
    q = b * g - n64[row] * n64[col]
    t = 2 * g - 1 - torch.sign(q)
    keep = (t != 0) & (row != col)
    idx = torch.stack([row[keep], col[keep]])
    return torch.sparse_coo_tensor(idx, t[keep].float(), (m, m), is_coalesced=True)


def _csr(bits: torch.Tensor) -> torch.Tensor:
    """0/1 matrix [r, c] (any dtype) -> float32 CSR with the same pattern."""
    idx = bits.nonzero()
    r, c = bits.shape
    counts = torch.bincount(idx[:, 0], minlength=r)
    crow = torch.zeros(r + 1, dtype=torch.int64, device=bits.device)
    crow[1:] = counts.cumsum(0)
    vals = torch.ones(idx.shape[0], dtype=torch.float32, device=bits.device)
    return torch.sparse_csr_tensor(crow, idx[:, 1].contiguous(), vals, (r, c))


def sparse_sign_product(h8: torch.Tensor, n: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """hS for sparse codes through row overlaps and the few excess pairs (see the module docstring).

    Args: h8 [B, m] int8 bits; n [m] int32 counts; l [B] int32 popcounts. Returns int32 [B, m].
    """
    b, m = h8.shape
    if int(l.sum()) == 0:
        return torch.zeros(b, m, dtype=torch.int32, device=h8.device)
    ht8 = h8.t().contiguous()
    overlap = int_mm(h8, ht8)  # K = h h^T [B, B]
    hs = count_mm(overlap, h8).mul_(2)  # 2 K h = 2 h G
    hs += h8 * (1 - 2 * n)  # h o (1 - 2n): the diagonal of G and the diag(a) term
    hs.addr_(l, (n > 0).to(torch.int32), alpha=-1)  # - l a^T
    t = _excess_pairs(h8, n, b)
    if t._nnz():
        hs -= torch.sparse.mm(t, ht8.float()).t().to(torch.int32)  # h T = (T h^T)^T, T symmetric
    return hs


def penalty_from_sign_product(hs: torch.Tensor, h8: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """D = sum_{i != j} |C_ij| from hS, exactly (integer sums), as a float64 scalar.

    Args: hs [B, m] int32; h8 [B, m] int8; n [m] int32.
    """
    b = h8.shape[0]
    on = (hs * h8).sum(dtype=torch.int64)  # sum_b h_b . (hS)_b = sum_ij G_ij S_ij
    cross = (hs.sum(0, dtype=torch.int64) * n).sum()  # n^T S n
    return (b * on - cross).double() / (b * (b - 1))
