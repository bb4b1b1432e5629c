"""JumpReLU and its step, with straight-through pseudo-derivatives for the threshold (rectangle kernel).

Forward (z: pre-activations [..., m], theta: thresholds [m], eps: bandwidth):

    jumprelu(z, theta) = z * H(z - theta)          step(z, theta) = H(z - theta),   H(u) = 1[u > 0]

Backward (Rajamanoharan et al. 2024, "Jumping Ahead"), with K(u) = 1[|u| < 1/2] the rectangle kernel:

| function | d/dz            | d/dtheta                               |
|----------|-----------------|----------------------------------------|
| jumprelu | H(z - theta)    | -(theta / eps) K((z - theta) / eps)    |
| step     | 0               | -(1 / eps) K((z - theta) / eps)        |

So the threshold only learns from pre-activations within eps/2 of it: raising an L0 penalty (through ``step``)
pushes theta up, the reconstruction (through ``jumprelu``) pulls it down where the jump costs error. The
threshold is a plain parameter, not its log: a log-space threshold under Adam moves only ~theta * lr per step.
Kept alone in this file so both backwards are tested against the formulas above.
"""

from __future__ import annotations

import torch


def _window(z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    return ((z - theta).abs() < eps / 2).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        grad_z = g * (z > theta).to(z.dtype)
        grad_theta = -(theta / ctx.eps) * _window(z, theta, ctx.eps) * g
        return grad_z, _sum_to(grad_theta, theta), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        grad_theta = -(1.0 / ctx.eps) * _window(z, theta, ctx.eps) * g
        return torch.zeros_like(z), _sum_to(grad_theta, theta), None


def _sum_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a broadcast gradient [..., m] back to the threshold's shape [m]."""
    return grad.reshape(-1, like.shape[-1]).sum(0).reshape(like.shape)


def jumprelu(z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``z * 1[z > theta]``; z [..., m], theta [m]; threshold gradient through the rectangle kernel."""
    return _JumpReLU.apply(z, theta, float(bandwidth))


def step(z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``1[z > theta]`` as 0.0/1.0; no gradient to z, rectangle-kernel gradient to theta (for the L0 penalty)."""
    return _Step.apply(z, theta, float(bandwidth))
