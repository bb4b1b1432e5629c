"""In-memory row sources for the trainer: activation files (.npy / .safetensors) and tensors.

A source is anything with ``n_rows``, ``dim``, ``batches(batch_size, epoch, seed)`` and ``rows(limit)``; the
activation store (``bitlens.data.store``) provides the same interface for data on disk.
Batch order is a pure function of (seed, epoch), so a resumed run can skip straight to its step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from ..io import BitlensError, npy_problem


class RowSource(Protocol):
    n_rows: int
    dim: int

    def batches(self, batch_size: int, epoch: int, seed: int, start: int = 0) -> Iterator[torch.Tensor]: ...

    def rows(self, limit: int | None = None) -> torch.Tensor: ...


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG that orders one epoch; independent of everything else, so resuming needs only the step."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class TensorRows:
    """Rows of a 2-D float tensor (a view, via an index array, of a larger one)."""

    def __init__(self, data: torch.Tensor, index: torch.Tensor | None = None):
        self.data = data
        self.index = torch.arange(data.shape[0]) if index is None else index
        self.n_rows = int(self.index.numel())
        self.dim = int(data.shape[1])

    def batches(self, batch_size: int, epoch: int, seed: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Shuffled full batches covering the rows once (the last incomplete batch is dropped); ``start``
        skips that many batches (for resuming mid-epoch)."""
        order = self.index[torch.randperm(self.n_rows, generator=epoch_generator(seed, epoch))]
        size = min(batch_size, self.n_rows)
        for first in range(start * size, self.n_rows - size + 1, size):
            yield self.data[order[first:first + size]].float()

    def rows(self, limit: int | None = None) -> torch.Tensor:
        """All rows, or the first ``limit`` of them (rows are already in random split order)."""
        idx = self.index if limit is None else self.index[:limit]
        return self.data[idx].float()


def split_rows(data: torch.Tensor, val_fraction: float, seed: int) -> tuple[TensorRows, TensorRows]:
    """Seeded shuffled split into (train, validation) rows."""
    n = data.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    if n - n_val < 2:
        raise BitlensError(f"only {n} rows: need at least 2 training rows after the validation split")
    return TensorRows(data, perm[n_val:]), TensorRows(data, perm[:n_val])


def validate_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """Refuse anything but a finite, non-empty 2-D float array (one-line BitlensError)."""
    if x.ndim != 2:
        raise BitlensError(f"{name}: expected a 2-D array [rows, dim], got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise BitlensError(f"{name}: array has zero rows or columns (shape {tuple(x.shape)})")
    if not x.dtype.is_floating_point:
        raise BitlensError(f"{name}: expected floating-point values, got {x.dtype}")
    bad = (~torch.isfinite(x)).any(1)
    if bad.any():
        raise BitlensError(f"{name}: {int(bad.sum())} row(s) contain NaN or inf (first at row {int(bad.nonzero()[0])})")
    return x


def load_activations(path: str | Path, key: str | None = None) -> torch.Tensor:
    """Load a [rows, dim] float array from .npy (no pickles) or .safetensors (``key`` or its only tensor)."""
    path = Path(path)
    if not path.is_file():
        raise BitlensError(f"activation file not found: {path}")
    try:
        if path.suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise BitlensError(f"cannot read {path}: {npy_problem(path, e)}") from None
            x = torch.from_numpy(np.ascontiguousarray(arr))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if key is None:
                if len(tensors) != 1:
                    raise BitlensError(f"{path} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); name the one to use")
                key = next(iter(tensors))
            if key not in tensors:
                raise BitlensError(f"{path} has no tensor {key!r}; it holds {', '.join(sorted(tensors))}")
            x = tensors[key]
        else:
            raise BitlensError(f"{path}: unsupported format {path.suffix!r}; use .npy or .safetensors")
    except BitlensError:
        raise
    except Exception as e:  # numpy/safetensors raise many kinds for corrupt files
        raise BitlensError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if x.dtype in (torch.float16, torch.bfloat16, torch.float64):
        x = x.float()
    return validate_rows(x, str(path))


class PairedRows:
    """Input rows and aligned target rows (e.g. a transcoder's MLP input and output): ``batches`` yields
    ``(x, y)`` pairs. Both sources must serve their rows in the same order for the same (epoch, seed), as two
    views of one store with the same selection do (``StoreView.at``)."""

    def __init__(self, inputs: RowSource, targets: RowSource):
        if inputs.n_rows != targets.n_rows:
            raise BitlensError(f"inputs have {inputs.n_rows} rows but targets {targets.n_rows}")
        self.inputs, self.targets = inputs, targets
        self.n_rows, self.dim, self.target_dim = inputs.n_rows, inputs.dim, targets.dim

    def batches(self, batch_size: int, epoch: int, seed: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from zip(self.inputs.batches(batch_size, epoch, seed, start=start),
                       self.targets.batches(batch_size, epoch, seed, start=start))

    def rows(self, limit: int | None = None) -> torch.Tensor:
        return self.inputs.rows(limit)

    def target_rows(self, limit: int | None = None) -> torch.Tensor:
        return self.targets.rows(limit)
