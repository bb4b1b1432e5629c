"""The elementwise work of the BAE training step, as small pure kernels that ``torch.compile`` fuses.

Each kernel has an eager body (in-place torch ops, the fewest passes plain torch allows) and, where they differ, an
out-of-place body for the compiler, which turns it into one or two loops of generated C++ (inductor; gcc on CPU):

* ``bits_and_counts``: the step, its fp32 0/1 copy, the unit counts and the row popcounts, in one pass over the
  pre-activations instead of four;
* ``gram_signs``: sign(B G - n n^T) of a Gram block (kept eager: compiled it measured slower);
* ``sign_sums``: the column sums of hS and sum h o hS (the penalty), exactly;
* ``surrogate_epilogue``: dL/dh = G + row + k hS followed by the surrogate's backward, one pass over B x d' instead
  of five or six (the bias broadcast, the hS add, and the surrogate's sigmoid, product and scale).

All values that change between steps (loss weights, tau) are passed as 0-d tensors, so the compiled code is not
specialised on them. Compiling happens on first use (seconds per kernel on a cold cache; inductor keeps its FX graph
cache on disk, by default under /tmp/torchinductor_<user>, so later processes load it). Where compiling is not
possible (no C++ compiler, an unsupported platform, a compile error) the eager bodies run instead, chosen
automatically, with one logged notice; ``BITLENS_COMPILE=0`` forces them. The training step uses the compiled
kernels only with ``LossConfig.compile`` (off by default: no measurable gain on a 2-core AVX2 CPU, BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch

log = logging.getLogger("bitlens")

EXACT_FP32 = 1 << 24
"""Integers up to this magnitude (and all partial sums of them below it) are exact in fp32."""

_failed: str | None = None  # why compiling was given up in this process (logged once)
_compiled: dict[str, Callable] = {}
compile_seconds = 0.0
"""Wall time spent in first calls of compiled kernels (tracing + code generation or cache load), this process."""


def compile_enabled() -> bool:
    """Whether compiled kernels are used at all in this process (``BITLENS_COMPILE=0`` turns them off)."""
    return _failed is None and os.environ.get("BITLENS_COMPILE", "").strip() != "0"


def _give_up(reason: str) -> None:
    global _failed
    if _failed is None:
        _failed = reason
        log.warning("bitlens: torch.compile is not usable here (%s); the training step runs its eager kernels "
                    "(same losses to float rounding, slower)", reason)


def _compiler_missing() -> str | None:
    import shutil

    from torch._inductor import config as inductor_config

    cxx = inductor_config.cpp.cxx
    names = [c for c in (cxx if isinstance(cxx, tuple) else (cxx,)) if c] or ["g++"]
    if any(shutil.which(c) for c in names):
        return None
    return f"no C++ compiler ({', '.join(names)}) on PATH"


def _run(name: str, eager: Callable, traced: Callable, compiled: bool, *args):
    """``traced(*args)`` compiled if ``compiled`` and compiling works here, else ``eager(*args)``."""
    global compile_seconds
    if not (compiled and compile_enabled()):
        return eager(*args)
    fn = _compiled.get(name)
    first = fn is None
    t0 = time.perf_counter()
    try:
        if first:
            if args[0].device.type == "cpu":
                missing = _compiler_missing()
                if missing:
                    _give_up(missing)
                    return eager(*args)
            fn = _compiled[name] = torch.compile(traced, fullgraph=True)
        out = fn(*args)
    except Exception as e:  # noqa: BLE001 - any failure of the compiler stack: fall back, say so once
        _compiled.pop(name, None)
        _give_up(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip().rstrip(":"))
        return eager(*args)
    if first:
        compile_seconds += time.perf_counter() - t0
    return out


# ---- step + counts ---------------------------------------------------------------------------------------------
def _bits_eager(pre: torch.Tensor):
    # the comparison written straight into fp32: (pre > 0).float() makes a bool tensor, then a bool -> fp32 pass that
    # measured 4.5x slower than this one (0.78 vs 0.18 ms at 512 x 2304 on an AVX-512 Xeon; BENCHMARKS.md, issue 18)
    h = torch.gt(pre, 0, out=torch.empty(pre.shape, dtype=torch.float32, device=pre.device))
    return h, h.sum(0), h.sum(1)


def _bits_traced(pre: torch.Tensor):
    h = (pre > 0).to(torch.float32)
    return h, h.sum(0), h.sum(1)


def bits_and_counts(pre: torch.Tensor, compiled: bool):
    """pre [B, m] -> (h [B, m] fp32 0/1, n [m] fp32 unit counts, l [B] fp32 popcounts); counts exact below 2^24."""
    return _run("bits", _bits_eager, _bits_traced, compiled, pre)


# ---- signs of a Gram block -----------------------------------------------------------------------------------
def _gram_signs_eager(q: torch.Tensor, ni: torch.Tensor, nj: torch.Tensor, b: torch.Tensor):
    q.addr_(ni, nj, beta=float(b), alpha=-1)
    return q.sign_()


def gram_signs(q: torch.Tensor, ni: torch.Tensor, nj: torch.Tensor, b: torch.Tensor, compiled: bool) -> torch.Tensor:
    """sign(b q - ni nj^T) for a block q [r, c] of the Gram matrix (fp32 integers; exact while b^2 < 2^24).

    Overwrites q. b is a 0-d fp32 tensor. Always eager: compiled (one pass) it measured slower than the two in-place
    passes on an AVX2 EPYC (0.93 vs 0.62 ms for a 2304 x 1024 block; BENCHMARKS.md, issue 18), so ``compiled`` is
    accepted and ignored."""
    return _gram_signs_eager(q, ni, nj, b)


# ---- the penalty's sums --------------------------------------------------------------------------------------
def _sign_sums_eager(hs: torch.Tensor, h: torch.Tensor):
    if hs.shape[0] * hs.shape[1] < EXACT_FP32:  # every partial sum of a column is an integer below 2^24: exact
        return hs.sum(0).double(), (hs * h).sum(0).double().sum()
    return hs.double().sum(0), (hs * h).double().sum()


def _sign_sums_traced(hs: torch.Tensor, h: torch.Tensor):
    hd = hs.to(torch.float64)
    return hd.sum(0), (hd * h.to(torch.float64)).sum()


def sign_sums(hs: torch.Tensor, h: torch.Tensor, compiled: bool):
    """(colsum [m], on) in float64, exact, of hS [B, m] (fp32 integers) and bits h [B, m] (fp32):
    colsum = 1^T hS and on = sum h o hS."""
    return _run("sign_sums", _sign_sums_eager, _sign_sums_traced, compiled, hs, h)


# ---- dL/dh and the surrogate ---------------------------------------------------------------------------------
def _surrogate_eager(g: torch.Tensor, pre: torch.Tensor, kind: str, tau: torch.Tensor) -> torch.Tensor:
    # the same formulas as coders.step (its module table), in place on the temporary g
    if kind == "identity":
        return g
    if kind == "official":
        return g.mul_(1 - g)
    x = pre.float()
    if kind == "sigmoid":  # one temporary (sig), the rest in place on g
        sig = x.div(tau).sigmoid_()
        torch.ops.aten.sigmoid_backward.grad_input(g, sig, grad_input=g)
        return g.div_(tau)
    return g.mul_(x * (1 - x))  # paper


def _epilogue_eager(gw: torch.Tensor, row: torch.Tensor, hs: torch.Tensor, k: torch.Tensor, pre: torch.Tensor,
                    tau: torch.Tensor, kind: str) -> torch.Tensor:
    dh = gw.add_(row)
    if float(k):
        dh.add_(hs, alpha=float(k))
    return dh if kind == "" else _surrogate_eager(dh, pre, kind, tau)


def _epilogue_traced(gw: torch.Tensor, row: torch.Tensor, hs: torch.Tensor, k: torch.Tensor, pre: torch.Tensor,
                     tau: torch.Tensor, kind: str) -> torch.Tensor:
    g = gw + row + k * hs
    if kind in ("", "identity"):
        return g
    if kind == "official":
        return g * (1 - g)
    x = pre.float()
    if kind == "sigmoid":
        s = torch.sigmoid(x / tau)
        return g * s * (1 - s) / tau
    return g * x * (1 - x)


_EPILOGUES: dict[str, Callable] = {}


def surrogate_epilogue(gw: torch.Tensor, row: torch.Tensor, hs: torch.Tensor, k: torch.Tensor, pre: torch.Tensor,
                       tau: torch.Tensor, kind: str, compiled: bool) -> torch.Tensor:
    """dL/d(pre) [B, m] = surrogate'(pre) * (gw + row + k hS).

    Args: gw [B, m] = dL/d recon @ W_out (fp32; the eager body overwrites it); row [m] fp32 (entropy gradient and
    the covariance's column-mean correction); hs [B, m] (fp32 or int32); k: 0-d fp32 (the covariance's factor);
    pre [B, m] pre-activations (any float dtype; unused by identity/official); tau: 0-d fp32; kind: a surrogate
    of ``coders.step``, or "" for dL/dh itself.
    """
    traced = _EPILOGUES.get(kind)
    if traced is None:  # one compiled graph per surrogate (kind is a constant of the graph)
        def traced(gw, row, hs, k, pre, tau, _kind=kind):
            return _epilogue_traced(gw, row, hs, k, pre, tau, _kind)
        _EPILOGUES[kind] = traced

    def eager(gw, row, hs, k, pre, tau):
        return _epilogue_eager(gw, row, hs, k, pre, tau, kind)
    return _run(f"epilogue/{kind}", eager, traced, compiled, gw, row, hs, k, pre, tau)
