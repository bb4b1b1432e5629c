"""Synthetic hidden states of known entropy (the paper's section 4.1).

x = sum_k c_k v_k + noise, with r random unit directions v_k in R^d and c uniform on {0,1}^r, so the set of
noise-free states has exactly r bits of entropy (2^r equally likely points, all distinct for random v_k).
"""

from __future__ import annotations

import torch


def known_entropy_data(n: int, dim: int, bits: int, seed: int = 0, noise: float = 0.0,
                       p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample n states.

    Args:
        n: number of rows; dim: d; bits: r latent bits; noise: std of added Gaussian noise per coordinate;
        p: firing probability of each latent bit (0.5 gives r bits of entropy; otherwise r * H_b(p)).
    Returns:
        x [n, dim] float32 and the latent bits c [n, bits] float32.
    """
    if bits < 1 or dim < 1 or n < 1:
        raise ValueError("n, dim and bits must be >= 1")
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(bits, dim, generator=g)
    directions = directions / directions.norm(dim=1, keepdim=True)
    c = (torch.rand(n, bits, generator=g) < p).float()
    x = c @ directions
    if noise > 0:
        x = x + noise * torch.randn(n, dim, generator=g)
    return x, c
