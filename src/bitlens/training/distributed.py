"""Data-parallel training under ``torch.distributed`` (``torchrun``) with the BAE's batch statistics kept exact.

The BAE's entropy and covariance penalties are statistics of the whole batch, so plain data parallelism (each rank
computes its loss on its own rows, gradients averaged) would change the objective with the number of ranks. Here
the objective is that of the **global** batch, exactly, whatever the number of ranks N:

* the global batch of B rows (``--batch-size``) is cut into N equal shares; rank r encodes its share;
* the bits of all shares are all-gathered **bit-packed** (B/N * d'/8 bytes per rank), so every rank holds the global
  code matrix and computes the global unit counts n, firing rates p = n/B and the exact integer product hS of the
  codes with the covariance's sign matrix (``fast_cov``, the same B d'^2 work as one process), keeping its rows;
* one all-reduce (float64, exact for the integer parts) of [squared error, sum_b h_b.(hS)_b, 1^T hS] gives the
  global reconstruction term, covariance penalty and the column sums of hS that its gradient needs;
* each rank back-propagates only through its own rows (the closed-form gradients of ``fast_step`` with the global
  B, p and colsum), and the parameter gradients are **summed** over ranks (each rank's is its rows' part of the
  global loss's gradient).

So N ranks compute the loss and gradient of one process with the whole batch, up to float summation order.
Everything else stays on the single-process path: the weights start identical (broadcast from rank 0), the
updates are identical on every rank (the same summed gradient, the same Adam), the target-FVU controller sees the
same global FVU on every rank; rank 0 alone evaluates, logs and writes checkpoints and manifests. Objectives
without batch statistics (the SAE baselines: batch means) train with averaged gradients, which is exact for them.

The process group is created from torchrun's environment on first use (``current_world``): NCCL on CUDA, gloo
on the CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from ..io import BitlensError

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_bits(h8: torch.Tensor) -> torch.Tensor:
    """Bits [b, m] (any integer or float dtype holding 0/1) -> uint8 [b, ceil(m/8)], 8 bits a byte (LSB first)."""
    b, m = h8.shape
    pad = (-m) % 8
    bits = h8.to(torch.uint8)
    if pad:
        bits = F.pad(bits, (0, pad))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=h8.device)
    return (bits.view(b, -1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, m: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: uint8 [b, ceil(m/8)] -> int8 bits [b, m]."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) & weights) != 0).view(packed.shape[0], -1)[:, :m].to(torch.int8)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one process: collectives run."""
        return self.size > 1

    @property
    def main(self) -> bool:
        """The process that evaluates, logs and writes files."""
        return self.rank == 0

    def share(self, rows: int) -> tuple[int, int]:
        """This rank's [start, stop) of a global batch of ``rows`` rows (equal shares; see ``check_batch``)."""
        per = rows // self.size
        return self.rank * per, (self.rank + 1) * per

    def check_batch(self, batch_size: int) -> int:
        """Rows per rank of a global batch; one line when the batch cannot be shared equally."""
        if batch_size % self.size:
            raise BitlensError(f"the batch of {batch_size} rows cannot be shared by {self.size} processes: choose "
                               f"a batch size divisible by {self.size}")
        if batch_size // self.size < 1:
            raise BitlensError(f"{self.size} processes but only {batch_size} rows per batch: a rank would get no data")
        return batch_size // self.size

    # ---- collectives (no-ops in a single process) ----------------------------------------------------------
    def gather_bits(self, h8: torch.Tensor) -> tuple[torch.Tensor, int]:
        """All ranks' bits [B, m] (int8, rank order) from this rank's [b, m], and the offset of this rank's rows.
        Bit-packed on the wire: b * m / 8 bytes per rank."""
        if not self.active:
            return h8, 0
        import torch.distributed as dist

        packed = pack_bits(h8)
        parts = [torch.empty_like(packed) for _ in range(self.size)]
        dist.all_gather(parts, packed.contiguous())
        return unpack_bits(torch.cat(parts), h8.shape[1]), self.rank * h8.shape[0]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a new tensor; ``t`` is left alone)."""
        if not self.active:
            return t
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out)
        return out

    def sum_gradients(self, params: Iterable[torch.nn.Parameter], average: bool = False) -> None:
        """Sum (or average) the parameters' gradients over ranks, in one flat all-reduce."""
        if not self.active:
            return
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        if average:
            flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_tensors(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite the tensors with rank 0's values, in place."""
        if not self.active:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.broadcast(t.data, 0)

    def broadcast_float(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device_of_collectives())
        self.broadcast_tensors([t])
        return float(t)

    def gather_floats(self, values: list[float]) -> list[list[float]]:
        """Every rank's list of floats (all the same length), in rank order."""
        if not self.active:
            return [list(values)]
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device_of_collectives())
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t)
        return [p.cpu().tolist() for p in parts]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def device_of_collectives(self) -> torch.device:
        """Where small tensors for collectives live: the GPU for NCCL, the CPU for gloo."""
        import torch.distributed as dist

        return (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
                else torch.device("cpu"))

    def device(self, name: str) -> str:
        """The training device of this rank: ``cuda`` becomes this rank's GPU (``cuda:LOCAL_RANK``)."""
        if self.active and name.strip().lower() in ("cuda", "auto") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return name


SINGLE = World()


def current_world(device: str = "cpu") -> World:
    """The world this process trains in: torchrun's (the default process group is created on the first call,
    NCCL for a CUDA device, else gloo) or a single process (``SINGLE``).

    Bad launches fail with one line: a partial torchrun environment, a GPU device with fewer GPUs than local ranks.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise BitlensError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
    if size <= 1:
        return SINGLE
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in os.environ]
    if missing:
        raise BitlensError(f"WORLD_SIZE={size} but {', '.join(missing)} not set: launch with torchrun")
    if not dist.is_available():
        raise BitlensError("this torch build has no torch.distributed")
    cuda = (device or "cpu").strip().lower().startswith("cuda")
    if cuda:
        if torch.cuda.device_count() <= local_rank:
            raise BitlensError(f"local rank {local_rank} needs GPU {local_rank} but torch sees "
                               f"{torch.cuda.device_count()}: start at most that many processes per node")
        torch.cuda.set_device(local_rank)
    # torch._dynamo (imported lazily, e.g. by torch.optim) keeps a reference to a process group that exists when it
    # is imported; destroy_process_group then cannot join gloo's worker threads, and one of them releasing a tensor
    # while the interpreter shuts down aborts the process ("terminate called without an active exception").
    import torch._dynamo as _dynamo  # noqa: F401  (as: a bare "import torch.x" would make torch local here)

    timeout = datetime.timedelta(seconds=float(os.environ.get("BITLENS_DIST_TIMEOUT", "1800")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    return World(rank, size, local_rank)


def leave_world() -> None:
    """Tear down the default process group, if any, while the interpreter is still whole (joins gloo's threads).

    Call once a distributed command has finished; every rank calls it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def global_code_statistics(codes: torch.Tensor, world: World) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch entropy (bits) and covariance penalty of the global batch whose rows on this rank are ``codes``
    [b, m] (0/1), computed as the distributed training step does (all-gathered bits, exact integer covariance).
    Returns float64 scalars, identical on every rank."""
    from ..ops.fast_cov import column_sums, dense_sign_product, row_dots
    from .losses import binary_entropy

    h8 = codes.to(torch.int8)
    h8_all, lo = world.gather_bits(h8)
    b = h8_all.shape[0]
    n = h8_all.sum(0, dtype=torch.int32)
    entropy = binary_entropy(n.double() / b).sum()
    hs = dense_sign_product(h8_all, n)[lo:lo + h8.shape[0]]  # this rank's rows of hS
    parts = world.sum(torch.cat([row_dots(hs, h8).sum(dtype=torch.int64).view(1), column_sums(hs)]))
    cov = (b * parts[0] - (parts[1:] * n).sum()).double() / (b * (b - 1))
    return entropy, cov
