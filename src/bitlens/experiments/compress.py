"""`bitlens compress` / `bitlens decompress`: hidden states of a store as BAE code files, and back.

``compress`` encodes held-out tokens of a store with a trained BAE, writes them in both code formats
(``bitlens.analysis.compression``), checks the round trip and writes ``compress.json``: bits per vector against
reconstruction error (MSE per element, FVU, cosine) for fp32, fp16, the packed and sparse files, the sparse
scheme's ideal size (|S| * ceil(log2 d') bits, no per-vector counts) and the entropy bound (sum of H_b(p_j)).
Every BAE row has the same error: they are lossless codings of the same codes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Serializable
from ..devices import resolve_device
from ..io import BitlensError, atomic_path, write_json, write_manifest
from ..analysis.compression import index_bits, reference_code
from ..analysis.entropy import bernoulli_entropy_bits, categorical_entropy_bits
from ..analysis.level_codes import read_any_codes, reference_levels, write_any_codes


@dataclass
class CompressConfig(Serializable):
    """Settings of `bitlens compress`."""

    coder: str
    """Trained BAE: a run folder (with checkpoint/) or a checkpoint folder."""
    store: str
    """Activation store holding the layer the BAE was trained on."""
    layer: int | None = None
    """Layer of the store (none: the store's only layer)."""
    out: str = "runs/compress"
    """Output folder: codes.packed.blc, codes.sparse.blc, compress.json."""
    max_tokens: int = 20000
    """At most this many tokens to compress (a seeded sample of the held-out documents)."""
    val_fraction: float = 0.1
    """Held-out document fraction (0.1 with seed 0: the held-out tokens of `bitlens train --store`)."""
    seed: int = 0
    """Seed of the store split and the token sample."""
    device: str = "cpu"
    """Device for encoding: cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class DecompressConfig(Serializable):
    """Settings of `bitlens decompress`."""

    coder: str
    """The BAE whose codes the file holds (run folder or checkpoint folder)."""
    input: str
    """Code file written by `bitlens compress` (.blc, packed or sparse)."""
    out: str
    """Output .npy file: float32 [n, d] reconstructions (or uint8 [n, d'] codes with --codes-only)."""
    codes_only: bool = False
    """Write the binary codes instead of the decoded hidden states."""


@torch.no_grad()
def reconstruct(model, codes: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """BAE decoder applied to codes uint8 [n, d'] (bits, or levels of a multi-bit coder) -> float32 [n, d]; the one
    decoding path of both commands."""
    device = next(model.parameters()).device
    decode = model.decode_levels if _bits(model) > 1 else lambda c: model.decode(c.float())
    out = [decode(torch.from_numpy(codes[i:i + chunk]).to(device)).cpu().numpy()
           for i in range(0, len(codes), chunk)]
    return np.concatenate(out) if out else np.zeros((0, model.d_in), np.float32)


def _errors(x: np.ndarray, x_hat: np.ndarray) -> dict[str, float]:
    x, x_hat = x.astype(np.float64), x_hat.astype(np.float64)
    err = ((x - x_hat) ** 2).sum()
    total = ((x - x.mean(0)) ** 2).sum()
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(x_hat, axis=1)
    cos = np.where(norms > 0, (x * x_hat).sum(1) / np.maximum(norms, 1e-300), 1.0)
    return {"mse": float(err / x.size), "fvu": float(err / max(total, 1e-300)), "cosine": float(cos.mean())}


def _bits(model) -> int:
    """Bits per unit: k of a multi-bit coder (ours; its codes are level indices), 1 for a BAE."""
    return int(getattr(model, "bits_per_unit", 1))


@torch.no_grad()
def encode_levels(model, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Level indices uint8 [n, d'] of a multi-bit coder."""
    device = next(model.parameters()).device
    return torch.cat([model.encode_levels(x[i:i + chunk].to(device)).cpu() for i in range(0, x.shape[0], chunk)])


def _load_bae(path: str):
    from ..coders.registry import load

    model = load(path)
    if not getattr(model, "binary", False) and _bits(model) == 1:
        raise BitlensError(f"{path} is a {model.architecture} coder; compression needs a binary (BAE) code")
    return model


def run_compress(cfg: CompressConfig) -> dict[str, Any]:
    from ..data.store import ActivationStore
    from ..training.run import encode_all

    model = _load_bae(cfg.coder).to(resolve_device(cfg.device))
    store = ActivationStore(cfg.store)
    layer = store.default_layer(cfg.layer)
    if store.dim != model.d_in:
        raise BitlensError(f"store vectors have {store.dim} dimensions, the BAE expects {model.d_in}")
    _, val = store.split(cfg.val_fraction, cfg.seed, layer)
    x = val.rows(cfg.max_tokens, seed=cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bits = _bits(model)
    codes = (encode_levels(model, x) if bits > 1 else encode_all(model, x, progress=cfg.progress)).numpy()
    encode_s = time.perf_counter() - started
    x_np = x.numpy()
    n, width = codes.shape
    d = x_np.shape[1]
    sizes, round_trip = {}, True
    for kind in ("packed", "sparse"):
        path = out / f"codes.{kind}.blc"
        sizes[kind] = write_any_codes(path, codes, kind, bits)
        round_trip &= bool(np.array_equal(read_any_codes(path)[0], codes))
    x_hat = reconstruct(model, codes)
    round_trip &= bool(np.array_equal(reconstruct(model, read_any_codes(out / "codes.sparse.blc")[0]), x_hat))
    bae_err = _errors(x_np, x_hat)
    if bits > 1:  # levels: the entropy bound is each unit's categorical entropy; a stored unit costs b + k bits
        hist = np.stack([(codes == v).mean(0, dtype=np.float64) for v in range(1 << bits)], -1)
        bound = float(categorical_entropy_bits(hist).sum())
        flips = (codes != reference_levels(codes, bits)).sum(1)
    else:
        bound = float(bernoulli_entropy_bits(codes.mean(0, dtype=np.float64)).sum())
        flips = (codes != reference_code(codes)).sum(1)
    rows = [
        {"format": "fp32", "bits_per_vector": 32.0 * d, **_errors(x_np, x_np.astype(np.float32))},
        {"format": "fp16", "bits_per_vector": 16.0 * d, **_errors(x_np, x_np.astype(np.float16).astype(np.float32))},
        {"format": "bae-packed (file)", "bits_per_vector": 8.0 * sizes["packed"] / n, **bae_err},
        {"format": "bae-sparse (file)", "bits_per_vector": 8.0 * sizes["sparse"] / n, **bae_err},
        {"format": "bae-sparse (ideal: ceil(log2 d') bits per index)",
         "bits_per_vector": float(flips.mean() * (index_bits(width) + (bits if bits > 1 else 0))), **bae_err},
        {"format": "entropy bound (sum of H_b(p_j))" if bits == 1 else "entropy bound (sum of level entropies)",
         "bits_per_vector": bound, **bae_err},
    ]
    summary = {"coder": cfg.coder, "store": cfg.store, "layer": layer, "n_vectors": n, "d": d, "d_prime": width, "bits_per_unit": bits,
               "store_dtype": store.manifest["dtype"], "mean_flipped_bits": float(flips.mean()),
               "index_bits": index_bits(width), "round_trip_exact": round_trip, "encode_seconds": encode_s,
               "file_bytes": sizes, "rows": rows}
    write_json(out / "compress.json", summary)
    write_manifest(out, command="compress", config=cfg.to_dict(), seeds={"seed": cfg.seed},
                   inputs={"store_settings": store.manifest.get("settings")})
    if not round_trip:
        raise BitlensError("round trip failed: decoded codes differ from the encoded ones (please report)")
    return summary


def run_decompress(cfg: DecompressConfig) -> Path:
    model = _load_bae(cfg.coder)
    codes, bits = read_any_codes(cfg.input)
    if bits != _bits(model):
        raise BitlensError(f"{cfg.input} holds codes of {bits} bit(s) per unit, the coder has {_bits(model)}")
    if codes.shape[1] != model.width:
        raise BitlensError(f"{cfg.input} holds {codes.shape[1]}-bit codes, the BAE has {model.width} units")
    result = codes if cfg.codes_only else reconstruct(model, codes)
    out = Path(cfg.out)
    if out.suffix != ".npy":
        raise BitlensError(f"the output must be a .npy file, not {out}")
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, result)
    return out
