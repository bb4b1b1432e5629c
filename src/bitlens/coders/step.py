"""The binarising step with a selectable surrogate gradient.

Forward: ``h = 1[x > 0]`` (exactly 0.0 or 1.0, same dtype as ``x``).
Backward, with ``g = dL/dh`` the incoming gradient:

| surrogate  | dL/dx                               | why it exists                                   |
|------------|-------------------------------------|-------------------------------------------------|
| identity   | g                                   | plain straight-through estimator (default)      |
| sigmoid    | g * s(1 - s) / tau, s = sigmoid(x/tau) | smooth surrogate with a window of width tau  |
| paper      | g * x (1 - x)                       | the paper's Eq. 6 as written (ablation only)    |
| official   | g * (1 - g)                         | what the official code computes (`sign_s`)      |

Kept alone in its own file so its backward can be tested against these formulas.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

Surrogate = Literal["identity", "sigmoid", "paper", "official"]
SURROGATES: tuple[str, ...] = get_args(Surrogate)


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: str, tau: float) -> torch.Tensor:
        ctx.surrogate = surrogate
        ctx.tau = tau
        if surrogate in ("sigmoid", "paper"):
            ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        s = ctx.surrogate
        if s == "identity":
            grad = g
        elif s == "official":
            grad = g * (1 - g)
        elif s == "sigmoid":
            (x,) = ctx.saved_tensors
            sig = torch.sigmoid_(x / ctx.tau)  # in place on the temporary
            # g s (1 - s) in one fused pass instead of three
            grad = torch.ops.aten.sigmoid_backward(g, sig).div_(ctx.tau)
        else:  # paper
            (x,) = ctx.saved_tensors
            grad = g * x * (1 - x)
        return grad, None, None


def binarize(x: torch.Tensor, surrogate: Surrogate = "identity", tau: float = 1.0) -> torch.Tensor:
    """Step function 1[x > 0] whose backward is the chosen surrogate.

    Args:
        x: pre-activations, any shape.
        surrogate: one of ``identity``, ``sigmoid``, ``paper``, ``official``.
        tau: bandwidth of the ``sigmoid`` surrogate (ignored by the others).
    Returns:
        tensor of 0.0/1.0 with the shape and dtype of ``x``.
    """
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    return _Step.apply(x, surrogate, float(tau))
