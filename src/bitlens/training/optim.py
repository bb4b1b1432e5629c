"""The optimiser every trainer and benchmark builds: Adam, with torch's fused kernel where the device has one.

Torch's default Adam on a CPU updates each parameter with about ten separate elementwise passes. The fused kernel
(``fused=True``) does the whole update in one. For a BAE at d = 576 (d' = 2304, 2.7M parameters) one update took
0.95 ms against 4.4 ms on a 2-core AVX-512/AMX Xeon (issue 18, fourteenth session): about 6% of a training
step. The two agree to float rounding, not bit for bit, so a run keeps the kernel it started with: a checkpoint's
``param_groups`` carry the ``fused`` flag, and resuming restores it (runs saved before this had none, and resume
with the plain loop).
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch


def adam(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam over ``params`` with the fused kernel when torch has one for their device, else the default loop."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError) as e:  # a device without the fused kernel (or an old torch)
        logging.getLogger("bitlens").debug("fused Adam unavailable (%s); using the default update", e)
        return torch.optim.Adam(params, lr=lr)
