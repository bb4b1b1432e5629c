"""Extraction under torchrun: N processes, each over its own documents, into one store that reads as one.

``torchrun --nproc_per_node N -m bitlens extract --out STORE ...``:

* the documents, in the store's seeded order, are dealt out: process r extracts ``order[r::N]`` (and a share
  ``max_tokens // N`` of the token budget, the remainder to the first processes) into its own part store
  ``STORE/parts/r-of-N/``: an ordinary store, written and resumed exactly as a one-process extraction (an
  interrupted run resumes every part after its last committed shard);
* when every part is complete, process 0 merges them: their shard folders are moved (renamed, no copy) into
  ``STORE/shards/`` in rank order and ``STORE/manifest.json`` lists them all, with the statistics of the whole
  store; ``parts/`` is removed. The reader sees one ordinary store. The merge can be interrupted and rerun: a
  shard already moved is found in its new place.

The store's settings record the number of processes (``processes``), so a rerun with another N, which would deal
the documents differently, is refused unless ``--overwrite``. No process group is needed: process 0 waits for the
parts' manifests to say complete (torchrun stops every process if one fails).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..io import BitlensError, check_out_dir
from .store import ActivationStore
from .store_format import _read_manifest
from .store_writer import StoreWriter

log = logging.getLogger(__name__)
PARTS = "parts"


@dataclass(frozen=True)
class Launch:
    """This process's rank among the extraction processes (torchrun's environment; 0 of 1 otherwise)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0


def launch() -> Launch:
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise BitlensError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
    if size > 1 and not 0 <= rank < size:
        raise BitlensError(f"RANK={rank} is not in 0..{size - 1}")
    return Launch(rank, size, local) if size > 1 else Launch()


def part_dir(out: Path, rank: int, size: int) -> Path:
    return out / PARTS / f"{rank}-of-{size}"


def merge_parts(cfg: Any, lm: Any, corpus: Any, layers: list[int], world: Launch, started: float,
                extract_to_store: Callable[..., Path]) -> Path:
    """Extract this process's part (with ``extract.extract_to_store``), then (process 0) wait for all parts and
    merge them into ``cfg.out``."""
    out = check_out_dir(cfg.out)
    merged = out / "manifest.json"
    settings = {"processes": world.size}
    if merged.is_file():
        old = _read_manifest(out)
        same = {"processes": world.size, "model": lm.describe(), "layers": layers,
                "corpus": {"name": corpus.name, "fingerprint": corpus.fingerprint, "n_documents": len(corpus)}}
        if old.get("complete") and all((old.get("settings") or {}).get(k) == v for k, v in same.items()):
            log.info("store %s is already complete (%d tokens)", out, old.get("n_tokens", 0))
            return out
        if not cfg.overwrite:
            raise BitlensError(f"{out} holds a store made with other settings or by "
                               f"{(old.get('settings') or {}).get('processes', 1)} process(es) (now {world.size}): "
                               "overwrite it or choose another folder")
        if world.rank == 0:
            shutil.rmtree(out)
        else:  # wait for process 0 to clear it
            while merged.exists():
                time.sleep(0.5)
    budget = None
    if cfg.max_tokens:
        budget = cfg.max_tokens // world.size + (1 if world.rank < cfg.max_tokens % world.size else 0)
        if budget < 1:
            raise BitlensError(f"--max-tokens {cfg.max_tokens} leaves process {world.rank} of {world.size} no tokens")
    part = part_dir(out, world.rank, world.size)
    extract_to_store(lm, corpus, part, layers=layers, max_seq_len=cfg.max_seq_len, forward_batch=cfg.forward_batch,
                     dtype=cfg.dtype, max_tokens=budget, include_first=cfg.include_first, shard_rows=cfg.shard_rows,
                     order_seed=cfg.seed, overwrite=cfg.overwrite, sites=cfg.sites, progress=cfg.progress,
                     extra_settings={"store_max_tokens": cfg.max_tokens or None, **settings},
                     rank=world.rank, world_size=world.size)
    if world.rank != 0:
        log.info("process %d: part %s complete; process 0 merges the store", world.rank, part)
        return out
    parts = [part_dir(out, r, world.size) for r in range(world.size)]
    _wait_for(parts)
    manifest = merge(out, parts, settings)
    log.info(f"wrote {manifest['n_tokens']} tokens x {manifest['dim']} dims, layers {manifest['layers']}, "
             f"{world.size} processes, to {out} in {time.perf_counter() - started:.1f}s")
    return out


def _wait_for(parts: list[Path], poll: float = 1.0) -> None:
    """Until every part's manifest says complete (torchrun ends this process if another one fails)."""
    while True:
        pending = [p for p in parts if not (p / "manifest.json").is_file() or not _read_manifest(p).get("complete")]
        if not pending:
            return
        time.sleep(poll)


def merge(out: Path, parts: list[Path], settings: dict[str, Any]) -> dict[str, Any]:
    """Move the parts' shards into ``out/shards`` (rank order) and write the merged manifest; idempotent."""
    manifests = [_read_manifest(p) for p in parts]
    first = manifests[0]
    for p, m in zip(parts[1:], manifests[1:]):
        if (m["dim"], m["layers"], m.get("sites", []), m["dtype"]) != (first["dim"], first["layers"],
                                                                       first.get("sites", []), first["dtype"]):
            raise BitlensError(f"{p}: not a part of the same store as {parts[0]}")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    shards = []
    for part, manifest in zip(parts, manifests):
        for shard in manifest["shards"]:
            name = f"{len(shards):06d}"
            src, dst = part / "shards" / shard["name"], out / "shards" / name
            if src.is_dir():  # not moved yet (a merge interrupted after a move finds it at dst)
                if dst.exists():
                    shutil.rmtree(dst)
                os.replace(src, dst)
            elif not dst.is_dir():
                raise BitlensError(f"{src}: shard missing (neither in its part nor merged): extract again")
            shards.append({**shard, "name": name, "part": part.name})
    for file in ("documents.jsonl", "tokens.json"):
        shutil.copyfile(parts[0] / file, out / file)
    own = {k: v for k, v in first["settings"].items() if k not in ("part", "store_max_tokens")}
    merged = {**first, "settings": {**own, **settings, "max_tokens": first["settings"].get("store_max_tokens")},
              "complete": False, "shards": shards}
    for key in ("n_tokens", "n_sequences", "excluded", "stats"):
        merged.pop(key, None)
    manifest = StoreWriter(out, merged).finish()  # statistics over all shards, manifest.json written atomically
    shutil.rmtree(out / PARTS, ignore_errors=True)
    ActivationStore(out)  # the merged store opens as one
    return manifest


__all__ = ["launch", "merge", "merge_parts", "part_dir"]
