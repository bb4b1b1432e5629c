"""Exact matrix products of small-integer matrices (bits 0/1, signs -1/0/1).

Products of such matrices are integers, so an int8 GEMM with int32 accumulation gives them *exactly* and, on CPUs
with AVX-512 (VNNI), about 3x faster per multiply-add than an fp32 GEMM. bf16 inputs would be exact too, but bf16
*outputs* are not (counts above 256 round), and the CPU bf16 GEMM cannot write fp32; hence int8 -> int32.

On CPUs without AVX-512 torch's int8 GEMM has no fast kernel: measured 36x *slower* than fp32 on an AVX2-only
AMD EPYC (2304 x 1200 x 2304: 19.2 s vs 0.53 s). There the fp32 GEMM is used, which is exact too while every
partial sum stays below 2^24 (products of 0/1 or sign matrices with fewer than 16.7M terms). ``BITLENS_INT8_MM=1``
or ``=0`` forces the choice (for benchmarks).
"""

from __future__ import annotations

import functools
import os

import torch

INT8_MAX = 127


@functools.lru_cache(maxsize=None)
def cpu_int8_is_fast() -> bool:
    """True where the CPU int8 GEMM has a fast kernel (torch dispatches AVX-512 code), or when forced."""
    forced = os.environ.get("BITLENS_INT8_MM", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return "AVX512" in torch.backends.cpu.get_cpu_capability()


def int8_gemm_is_fast(device_type: str) -> bool:
    """Whether exact bit products should be int8 GEMMs on this device type (CUDA, AVX-512 CPUs) rather than fp32
    ones: the one place callers choose their int8 or fp32 route from (``fast_cov``, ``fast_step``)."""
    return device_type != "cpu" or cpu_int8_is_fast()


def _int_mm_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device.type == "cpu":
        return int8_gemm_is_fast("cpu") and a.shape[1] < (1 << 24)
    # cuBLASLt int8 needs these shapes; anything else takes the float route below.
    n, k = a.shape
    p = b.shape[1]
    return a.device.type == "cuda" and n > 16 and k % 8 == 0 and p % 8 == 0


def _blas_layout(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if it is row- or column-major with a valid leading dimension, else a row-major copy.

    Needed because ``.contiguous()`` keeps degenerate strides on size-1 dims (e.g. (1, 1) for [1, 2]) and the CPU
    int8 kernel then reads the wrong elements.
    """
    rows, cols = t.shape
    if t.stride(1) == 1 and t.stride(0) >= max(cols, 1):
        return t
    if t.stride(0) == 1 and t.stride(1) >= rows and min(rows, cols) > 1:
        return t
    return t.new_empty(t.shape).copy_(t)


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ b`` for int8 matrices a [n, k], b [k, p] -> int32 [n, p].

    Falls back to an fp32 product (exact while every partial sum stays below 2^24) where the int8 kernel is not
    available, or not fast, for the device or shape.
    """
    if _int_mm_ok(a, b):
        return torch._int_mm(_blas_layout(a), _blas_layout(b))
    return (a.float() @ b.float()).to(torch.int32)


def count_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ b`` for non-negative integer matrices with entries possibly above int8 (e.g. row overlaps).

    Args: a [n, k] integer tensor, b [k, p] int8 tensor. Returns int32 [n, p].
    """
    if a.numel() == 0 or int(a.max()) <= INT8_MAX:
        return int_mm(a.to(torch.int8), b)
    return (a.float() @ b.float()).to(torch.int32)
