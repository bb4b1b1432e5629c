"""How well a BAE *could* reconstruct a planted code: the best linear-threshold readout of the true bits.

A BAE reads each bit as ``1[w . x + b > 0]`` and decodes linearly. When the planted features outnumber the
dimensions (the ``superposed`` family), no such readout recovers every bit exactly: the other features leak into
each projection. The floor of the architecture on such data is therefore not 0 (nor the noise floor), and a target
FVU below it cannot be met by any BAE that uses the true code. This module measures that floor with supervision:

* one logistic regression per planted bit on x (Adam; full batch, or shuffled minibatches where the full batch is
  too dear), thresholded at 0: the linear-threshold code closest to the truth;
* the decoder that is best for that code: least squares of x on [bits, 1] (normal equations from sparse products);
* its FVU, its bit error rate and the entropy of the code it reads (sum of marginal H_b), on held-out rows when
  given (``bitlens synth`` does: its BAEs are measured there too).

This is an upper bound on the architecture's floor for codes of the true entropy (an unsupervised BAE may trade
bits differently), and the reference ``bitlens synth`` adds its target to on such families.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .entropy import bernoulli_entropy_bits


class Readout(NamedTuple):
    fvu: float
    """FVU of x reconstructed from the read bits by least squares (about the mean)."""
    bit_error: float
    """Fraction of (row, bit) entries read wrong."""
    bits: float
    """Entropy of the read code: sum over bits of H_b(firing rate), in bits."""
    weight: torch.Tensor
    """[r, d] readout rows in the space of x: bit k is 1[weight_k . x + bias_k > 0]."""
    bias: torch.Tensor
    """[r] readout thresholds."""
    decoder: torch.Tensor
    """[d, r] least-squares decoder of x from the read bits."""
    decoder_bias: torch.Tensor
    """[d] its constant."""


def threshold_readout(x: torch.Tensor, codes: torch.Tensor, steps: int = 300, lr: float = 0.05,
                      seed: int = 0, held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
                      batch_rows: int = 0) -> Readout:
    """The best linear-threshold readout of planted bits (see the module docstring).

    Args: x [n, d] states; codes [n, r] planted 0/1 bits; steps, lr: the logistic fit (Adam);
    held_out: (x, codes) of other rows on which ``fvu``, ``bit_error`` and ``bits`` are then measured (the readout
    and its decoder are fitted on x only), so the floor is stated where a BAE's FVU is measured: rare features'
    thresholds fitted on few firings read the fitted rows better than new ones;
    batch_rows: 0 fits on all rows at every step (full batch); else each step takes the next ``batch_rows`` rows of
    a shuffled pass (one epoch after another), which costs n / batch_rows times less per step.
    """
    torch.manual_seed(seed)
    x, codes = x.float(), codes.float()
    n = x.shape[0]
    mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
    xs = (x - mean) / std  # a well-conditioned fit; the readout stays linear in x
    w = torch.zeros(x.shape[1], codes.shape[1], requires_grad=True)
    b = torch.zeros(codes.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    order, cursor = torch.arange(n), n
    for _ in range(steps):
        if 0 < batch_rows < n:
            if cursor + batch_rows > n:
                order, cursor = torch.randperm(n), 0
            rows = order[cursor:cursor + batch_rows]
            cursor += batch_rows
            inputs, targets = xs[rows], codes[rows]
        else:
            inputs, targets = xs, codes
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(inputs @ w + b, targets).backward()
        opt.step()
    with torch.no_grad():
        weight = (w / std[:, None]).t().contiguous()  # undo the standardisation: logits = weight . x + bias
        bias = b - (mean / std) @ w
        read = _read(x, weight, bias)
        solution = _least_squares_decoder(read, x)
        ex, ecodes = x, codes
        if held_out is not None:  # measured on other rows: read them too (else the fitted rows' read is reused)
            ex, ecodes = held_out[0].float(), held_out[1].float()
            read = _read(ex, weight, bias)
        design = torch.cat([read.double(), torch.ones(read.shape[0], 1, dtype=torch.float64)], 1)
        err = (design @ solution - ex.double()).pow(2).sum()
        var = (ex.double() - ex.double().mean(0)).pow(2).sum().clamp_min(1e-30)
        return Readout(float(err / var), float((read != ecodes).float().mean()),
                       float(bernoulli_entropy_bits(read.mean(0)).sum()), weight, bias.detach().clone(),
                       solution[:-1].t().float().contiguous(), solution[-1].float())


def _read(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[n, r] 0/1 (float32) bits read from x [n, d] by the thresholds."""
    return ((x.float() @ weight.t() + bias) > 0).float()


def _least_squares_decoder(read: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[r + 1, d] float64 least squares of x on [read, 1], from the normal equations.

    The read code is sparse (rare features), so its Gram matrix and its products with x are formed from the ones
    only (sparse products: n L0 r and n L0 d multiply-adds rather than n r^2, which at d = 512, r = 1024 and 118k
    rows is the difference between seconds and minutes). Sums of 0/1 and of x in float64; the (r + 1)^2 system is
    solved by an SVD least squares, so a bit that never fires or repeats another one is handled exactly.
    """
    design = torch.cat([read, torch.ones(read.shape[0], 1)], 1).double()
    ones = design.to_sparse().t()  # [r + 1, n] COO: sparse x dense products (no beta CSR path)
    gram, moment = torch.sparse.mm(ones, design), torch.sparse.mm(ones, x.double())
    # gelsd (SVD): torch's default gelsy returned residuals 80x too large on an exactly rank-deficient system
    return torch.linalg.lstsq(gram, moment, driver="gelsd").solution
