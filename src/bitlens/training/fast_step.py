"""The BAE loss after the step function, as one autograd Function with closed-form gradients.

``decoder_losses(h, xn, W_out, b_out, ...)`` returns the same (loss, recon, entropy, covariance) as composing
``losses.py`` by autograd, to float rounding, but

* the covariance penalty and its gradient come from exact integer products of the bits (``fast_cov``): no d' x d'
  float covariance, no abs/sign passes over it, no autograd graph through it;
* the entropy gradient is a row vector, added in the pass that forms dL/dh after its GEMM; ``step_losses`` takes
  the pre-activations instead of h, so the step and its surrogate's backward join that pass (``ops.fused``; the
  elementwise kernels are compiled by torch.compile with ``StepSpec.compile``, eager otherwise);
* for sparse codes the decoder forward and its weight gradient touch only the active bits (``embedding_bag``),
  and the covariance uses gathers of sign rows (one process on a CPU: fp32 CPUs, and int8-fast ones up to
  ``GATHER_MAX_WIDTH_INT8_CPU`` units) or row overlaps (CUDA, wider codes, several processes) instead of the Gram
  matrix. Which path runs is decided per batch from the measured density (``SPARSE_MAX_DENSITY``,
  ``SPARSE_MAX_DENSITY_FP32``, ``SPARSE_MAX_DENSITY_ROWS_FP32``).

Everything is device-agnostic (CPU int8 GEMMs; on CUDA the same calls, with a float fallback where the int8 kernel
does not take the shape). Under autocast the encoder may run in bf16: the bits are exact in any dtype and this
Function computes in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..coders.step import SURROGATES
from ..ops import fused
from ..ops.bit_products import int8_gemm_is_fast
from ..ops.fast_cov import (
    column_sums,
    dense_sign_product,
    dense_sign_product_bits,
    gather_sign_product,
    penalty_from_sign_product,
    row_dots,
    row_lists,
    sparse_sign_product,
    transposed_lists,
)
from ..ops.fused import EXACT_FP32
from . import losses

SPARSE_MAX_DENSITY = 0.04
"""Use the sparse path when at most this fraction of the bits is on, where the int8 GEMM is fast (CUDA, CPUs with
AVX-512) and the sparse covariance comes from gathers. Measured with ``bench/train_step.py --sweep`` on a 2-core
AVX-512/AMX Xeon (issue 18, thirteenth session): at d' = 2304 the gather path and the dense path cross at 4.3% of
the bits on. Not measured on a GPU (whose sparse path takes row overlaps)."""
SPARSE_MAX_DENSITY_ROWS_INT8_CPU = 0.013
"""The same on int8-fast CPUs where the sparse covariance comes from row overlaps (codes wider than
``GATHER_MAX_WIDTH_INT8_CPU``, several processes): the excess row pairs grow fast with the density. Measured on the
same Xeon: the row-overlap and dense paths cross at about 1.4% at d' = 8192 (0.95 vs 1.53 of the GEMM floor at 1.0%,
1.75 vs 1.52 at 1.5%, 3.6 vs 1.5 at 2.0%) and about 1.5% at d' = 2304."""
SPARSE_MAX_DENSITY_FP32 = 0.12
"""The same where the bit products run in fp32 (CPUs without AVX-512, ``ops.bit_products``), where the sparse path
takes the covariance from gathers (``fast_cov.gather_sign_product``). Calibrated with ``bench/train_step.py --sweep``
(issue 18, BENCHMARKS.md) on a 2-core AVX2-only AMD EPYC, batch 512, compiled kernels: the two paths cross at about
14% of the bits on at d = 2048 (d' = 8192) and about 22% at d = 576; the switch sits below the lower one."""


@dataclass(frozen=True)
class StepSpec:
    """Constants of one evaluation of the objective."""

    preset: str  # "scale_free": squared error per vector / variance; "paper": per-element MSE
    variance: float
    entropy_weight: float
    cov_weight: float
    entropy_threshold: float = 0.0
    path: str = "auto"  # auto | dense | sparse
    group: Any = None
    """A ``distributed.BatchGroup`` when this batch is one rank's share of a global batch: the entropy, covariance
    and reconstruction terms are then those of the global batch (exactly), and gradients reach only these rows."""
    compile: bool = False
    """Run the elementwise work through ``ops.fused``'s compiled kernels (eager where compiling is unavailable)."""


GATHER_MAX_WIDTH_INT8_CPU = 4096
"""On CPUs whose int8 GEMM is fast (AVX-512), sparse codes up to this many units take the covariance from gathers
(as on fp32 CPUs) rather than from row overlaps. Measured with bench/train_step.py on a 2-core AVX-512/AMX Xeon
and a 2-core AVX-512 EPYC (BENCHMARKS.md, issue 18, ninth and tenth sessions): on both, gathers were faster at
d' = 2304 (EPYC: 1.01 vs 1.21 of the GEMM floor) and row overlaps at d' = 8192 (0.74-0.84 vs 1.06)."""

SPARSE_MAX_DENSITY_ROWS_FP32 = 0.01
"""Where the bit products run in fp32 but the gather path does not apply (several processes: the row-overlap sparse
path runs on the global batch). Measured with bench/train_step.py at d = 576 on an AVX2-only EPYC under load: at 1.4%
density the dense path took 3.5x the GEMM floor against 4.2x for the row-overlap path; at 3.1%, 5.8x vs 10.4x."""


DENSITY_SWITCHES = ("SPARSE_MAX_DENSITY", "SPARSE_MAX_DENSITY_ROWS_INT8_CPU", "SPARSE_MAX_DENSITY_FP32",
                    "SPARSE_MAX_DENSITY_ROWS_FP32")
"""Names of every density limit ``choose_path`` reads: set them all to force one path (benches, tests)."""


def gathers_covariance(device_type: str, width: int, rows: int) -> bool:
    """Whether one process's sparse path takes the covariance from gathers of fp32 bits (else from row overlaps):
    where the bit products are fp32, or on int8-fast CPUs up to ``GATHER_MAX_WIDTH_INT8_CPU`` units, while the
    batch's pair counts stay exact in fp32."""
    return rows * rows < EXACT_FP32 and (
        not int8_gemm_is_fast(device_type) or (device_type == "cpu" and width <= GATHER_MAX_WIDTH_INT8_CPU))


def choose_path(density: float, path: str = "auto", device_type: str = "cpu", gather: bool = True) -> str:
    """dense or sparse for codes with this fraction of bits on; ``gather``: the sparse path would take the
    covariance from gathers (``gathers_covariance``), else from row overlaps."""
    if path != "auto":
        return path
    if int8_gemm_is_fast(device_type):
        limit = SPARSE_MAX_DENSITY if gather or device_type != "cpu" else SPARSE_MAX_DENSITY_ROWS_INT8_CPU
    else:
        limit = SPARSE_MAX_DENSITY_FP32 if gather else SPARSE_MAX_DENSITY_ROWS_FP32
    return "sparse" if density <= limit else "dense"


def _entropy_grad(p: torch.Tensor) -> torch.Tensor:
    """d/dp of sum_j H_b(p_j), by autograd on the reference formula ([m] work, so exactly its semantics)."""
    with torch.enable_grad():
        leaf = p.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(losses.binary_entropy(leaf).sum(), leaf)
    return grad


class _DecoderLosses(torch.autograd.Function):
    """Input 0 is the code h [B, m] (``surrogate`` None) or the pre-activations (a surrogate of ``coders.step``:
    the step then runs inside, and the backward returns dL/d(pre) with the surrogate fused into the dL/dh pass)."""

    @staticmethod
    def forward(ctx, h, xn, w_out, b_out, spec: StepSpec, surrogate: str | None = None, tau: float = 1.0):
        with torch.autocast(h.device.type, enabled=False):  # fp32 here whatever the caller's autocast
            return _DecoderLosses._forward(ctx, h, xn, w_out.float(), b_out.float(), spec, surrogate, tau)

    @staticmethod
    def _forward(ctx, h, xn, w_out, b_out, spec: StepSpec, surrogate, tau):
        group = spec.group
        if surrogate is not None:  # h is the pre-activation: step, fp32 copy and counts in one pass
            hf, nf, lf = fused.bits_and_counts(h.float(), spec.compile)
        else:
            hf = h.float()
            nf = lf = None
        rows, m = hf.shape  # this process's rows
        d = xn.shape[1]
        # fp32 bits serve the dense path where the bit products are fp32 GEMMs anyway (no int8 copies of h), and the
        # gather path of sparse codes, which is also the faster sparse path on int8-fast CPUs up to a width
        gather = group is None and gathers_covariance(hf.device.type, m, rows)
        h8 = None
        if group is None:
            h8_all, lo = None, 0
            if nf is None:
                nf, lf = hf.sum(0), hf.sum(1)  # float sums of bits are exact below 2^24 and need no int copy of h
            n, l = nf.to(torch.int32), lf.to(torch.int32)
        else:  # every rank holds the global batch's bits (all-gathered, bit-packed) and its own rows' offset
            h8 = hf.to(torch.int8)
            h8_all, lo = group.gather_bits(h8)
            n = h8_all.sum(0, dtype=torch.int32)
            l = h8_all.sum(1, dtype=torch.int32)
        b = h8_all.shape[0] if h8_all is not None else rows  # the (global) batch the statistics are taken over
        path = choose_path(float(l.sum()) / max(b * m, 1), spec.path, hf.device.type, gather=gather)
        float_bits = gather and (path == "sparse" or not int8_gemm_is_fast(hf.device.type))

        lists = lists_t = None
        if path == "sparse" and float_bits:  # the covariance by gathers (fast_cov.gather_sign_product)
            lists = row_lists(hf, padded=False)
            lists_t = transposed_lists(lists, m)
            hs = gather_sign_product(hf, nf, lists, lists_t, spec.compile)
            recon = F.embedding_bag(lists.cols, w_out.t().contiguous(), lists.offsets, mode="sum") + b_out
        elif path == "sparse":
            if h8 is None:
                h8 = h8_all = hf.to(torch.int8)
            lists_all = row_lists(h8_all)
            hs = sparse_sign_product(h8_all, n, l, lists_all)
            if group is None:
                lists = lists_all
            else:
                hs = hs[lo:lo + rows]
                lists = row_lists(h8)
            lists_t = transposed_lists(lists, m)
            recon = F.embedding_bag(lists.cols, w_out.t().contiguous(), lists.offsets, mode="sum") + b_out
        else:
            recon = torch.addmm(b_out, hf, w_out.t())
            if float_bits:
                hs = dense_sign_product_bits(hf, nf, spec.compile)
            else:
                if h8 is None:
                    h8 = h8_all = hf.to(torch.int8)
                hs = dense_sign_product(h8_all, n)
                if group is not None:  # this rank's rows of the global batch's hS
                    hs = hs[lo:lo + rows]
                else:  # one fp32 copy (exact: |hS| < m) serves the sums below and the backward's fp32 epilogue;
                    # the int32 row dots and the int32 + fp32 add cost 2.9 ms at 512 x 2304 against 0.7 (issue 18)
                    hs = hs.float()
        float_hs = hs.is_floating_point()
        if float_hs:  # compiled (float64) sums only for fp32 bits: after the int8 route the eager ones measured faster
            colsum64, on64 = fused.sign_sums(hs, hf, spec.compile and float_bits)
            colsum = colsum64.long()
        else:
            colsum = column_sums(hs)  # int64
        err = recon - xn  # [rows, d]
        denom = b * spec.variance if spec.preset == "scale_free" else b * d

        p = n.float() / b
        entropy = losses.binary_entropy(p).sum()
        entropy_on = not (spec.entropy_threshold > 0 and entropy.item() < spec.entropy_threshold)
        if not entropy_on:
            entropy = torch.zeros_like(entropy)  # the official floor: a gradient-free 0
        if group is None:
            recon_term = err.pow(2).sum() / denom
            if float_hs:
                cov = ((b * on64 - (colsum64 * n).sum()) / (b * (b - 1))).to(hf.dtype)
            else:
                cov = penalty_from_sign_product(hs, h8, n, colsum, lists).to(hf.dtype)
        else:  # one all-reduce (float64: exact for the integer parts) of the squared error, sum h.hS and 1^T hS
            on = (hs.view(-1)[lists.rows * m + lists.cols].sum(dtype=torch.int64) if lists is not None
                  else row_dots(hs, h8).sum(dtype=torch.int64))
            total = group.sum(torch.cat([err.pow(2).sum(dtype=torch.float64).view(1), on.double().view(1),
                                         colsum.double()]))
            recon_term = (total[0] / denom).to(hf.dtype)
            colsum = total[2:].round().long()
            cov = ((b * total[1] - (colsum * n).sum().double()) / (b * (b - 1))).to(hf.dtype)

        loss = recon_term + spec.entropy_weight * entropy + spec.cov_weight * cov
        ctx.spec, ctx.path, ctx.entropy_on, ctx.denom, ctx.b = spec, path, entropy_on, denom, b
        ctx.h_dtype = h.dtype
        ctx.lists_t = lists_t
        ctx.surrogate, ctx.tau = surrogate, tau
        # the dense decoder weight gradient reads the fp32 bits (same values as h8): an fp32 GEMM reads their transpose
        # as it lies, where int8 bits cost a transposed fp32 copy of B x m in the backward (0.6 ms at d' = 2304); the
        # sparse one reads lists_t instead, so the bits are not kept for it
        bits = None if path == "sparse" else hf
        ctx.save_for_backward(bits, err, w_out, hs, colsum, p, h if surrogate in ("sigmoid", "paper") else None)
        return loss, recon_term, entropy, cov

    @staticmethod
    def backward(ctx, g_loss, g_recon, g_entropy, g_cov):
        with torch.autocast(g_loss.device.type if g_loss is not None else "cpu", enabled=False):
            return _DecoderLosses._backward(ctx, g_loss, g_recon, g_entropy, g_cov)

    @staticmethod
    def _backward(ctx, g_loss, g_recon, g_entropy, g_cov):
        bits, err, w_out, hs, colsum, p, pre = ctx.saved_tensors
        spec = ctx.spec
        b = ctx.b  # the global batch: the statistics' gradients are divided by it, not by this rank's rows
        zero = err.new_zeros(())
        g_loss, g_recon, g_entropy, g_cov = (zero if g is None else g for g in (g_loss, g_recon, g_entropy, g_cov))
        # one host sync for the three coefficients, so zero weights (warm-up) skip their work
        c_r, c_e, c_c = torch.stack([g_loss + g_recon, g_loss * spec.entropy_weight + g_entropy,
                                     g_loss * spec.cov_weight + g_cov]).tolist()
        if not ctx.entropy_on:
            c_e = 0.0

        g_err = err * (2 * c_r / ctx.denom)  # dL/d recon [B, d]
        # dL/dh = g_err W_out + (row vector: entropy term and the covariance's column-mean correction) + k hS,
        # then (with a surrogate) times the surrogate's derivative: one fused pass after the GEMM
        row = torch.zeros_like(p)
        if c_e:
            row += _entropy_grad(p) * (c_e / b)
        k = 2 * c_c / (b - 1)
        if k:
            row -= colsum.to(row.dtype) * (k / b)
        scalars = torch.tensor([k, ctx.tau], dtype=torch.float32, device=err.device)
        pre_in = pre if pre is not None else err  # unused by the kernel for identity/official/no surrogate
        dh = fused.surrogate_epilogue(g_err @ w_out, row, hs, scalars[0], pre_in, scalars[1],
                                      ctx.surrogate or "", spec.compile)

        grads = [dh.to(ctx.h_dtype), None, None, None, None, None, None]
        if ctx.needs_input_grad[1]:
            grads[1] = -g_err
        if ctx.needs_input_grad[2]:
            if ctx.path == "sparse":  # dW_out^T [m, d]: row j sums g_err over the rows where bit j is on
                by_unit = ctx.lists_t
                grads[2] = F.embedding_bag(by_unit.cols, g_err, by_unit.offsets, mode="sum").t()
            else:  # computed as (h^T g_err)^T: the column-major layout of the parameter (see BinaryAutoencoder)
                grads[2] = (bits.t() @ g_err).t()
        if ctx.needs_input_grad[3]:
            grads[3] = g_err.sum(0)
        return tuple(grads)


def decoder_losses(h: torch.Tensor, xn: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor,
                   spec: StepSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, recon, entropy, covariance) of codes h [B, m] (0/1, carrying the surrogate gradient).

    Args:
        h: [B, m] bits from ``binarize``; xn: [B, d] normalised inputs (the reconstruction target);
        w_out: [d, m] decoder weight; b_out: [d] decoder bias; spec: weights and options.
    Returns: four scalars, as ``losses`` composes them (recon = normalized_mse or mse by preset); with
    ``spec.group`` those of the global batch (every rank returns the same values).
    """
    if h.shape[0] < 2 and spec.group is None:
        raise ValueError("the covariance penalty needs a batch of at least 2")
    return _DecoderLosses.apply(h, xn.float(), w_out, b_out, spec)


def step_losses(pre: torch.Tensor, xn: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor, spec: StepSpec,
                surrogate: str, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``decoder_losses`` of the codes ``binarize(pre, surrogate, tau)``, with the step inside the Function.

    The step, its counts and the surrogate's backward then join the fused kernels (``ops.fused``); the gradient
    reaching ``pre`` is the one ``binarize`` would pass back (to float rounding).
    Args: pre [B, m] encoder pre-activations; the rest as ``decoder_losses``; surrogate, tau as ``binarize``.
    """
    if pre.shape[0] < 2 and spec.group is None:
        raise ValueError("the covariance penalty needs a batch of at least 2")
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    return _DecoderLosses.apply(pre, xn.float(), w_out, b_out, spec, surrogate, float(tau))
