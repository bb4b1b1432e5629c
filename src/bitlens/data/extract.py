"""Extract residual-stream activations from a causal LM into an on-disk activation store.

"Layer L" is ``hidden_states[L]`` of a Hugging Face forward pass with ``output_hidden_states=True``: the
residual stream *entering* decoder block L (layer 0 = token embeddings as the first block sees them,
layer ``n_layers`` = the model's final output after its last norm). We capture it with a forward
pre-hook on block L (or a forward hook on the base model for ``n_layers``) and stop the forward pass right
after the deepest requested layer by raising a private exception, so the later blocks and the LM head
never run.

Token selection: padding, special tokens the tokenizer adds (BOS) and, by default, position 0 of every
sequence are not stored. Position 0 is the attention sink: in SmolLM2 its middle-layer norm is ~27,000
against ~200 elsewhere, and one such row dominates any mean or loss.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch

from ..config import Serializable
from ..io import BitlensError, check_out_dir
from .corpora import Corpus, load_corpus
from .models import LoadedModel, load_model
from .sequences import (TokenSequence, document_sequences, iter_sequences, keep_mask_and_meta, pad_batch,
                        special_prefix)
from .store_format import Key, parse_site
from .store_writer import StoreWriter
from .token_texts import token_texts

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- capture


class _StopForward(Exception):
    """Raised by our hook once the deepest requested layer is captured; never escapes this module."""


def check_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """Sorted unique layers, each in [0, n_layers]; BitlensError otherwise."""
    if not layers:
        raise BitlensError("no layers requested")
    bad = [layer for layer in layers if not 0 <= layer <= n_layers]
    if bad:
        raise BitlensError(f"layer {bad[0]} out of range: this model has layers 0..{n_layers} "
                           f"(0 = embeddings, {n_layers} = final output)")
    return sorted(set(int(layer) for layer in layers))


def check_sites(sites: Sequence[str], n_layers: int) -> list[str]:
    """Unique named sites (``mlp_in.L`` / ``mlp_out.L`` with L a block index), in the order given."""
    out = []
    for site in sites:
        _, layer = parse_site(site)
        if not 0 <= layer < n_layers:
            raise BitlensError(f"site {site}: this model has blocks 0..{n_layers - 1}")
        if site not in out:
            out.append(site)
    return out


def mlp_module(lm: LoadedModel, layer: int) -> torch.nn.Module:
    """The MLP of block ``layer`` (``block.mlp`` in Llama- and GPT-2-like models)."""
    mlp = getattr(lm.blocks[layer], "mlp", None)
    if not isinstance(mlp, torch.nn.Module):
        raise BitlensError(f"block {layer} of {type(lm.model).__name__} has no `mlp` submodule: "
                           "MLP sites are not supported for this model")
    return mlp


def _depth(key: Key, n_layers: int) -> tuple[int, int]:
    """Order of capture points in the forward pass: residual L, then block L's MLP input, then its output."""
    if isinstance(key, int):
        return (key, 0)
    kind, layer = parse_site(key)
    return (layer, 1 if kind == "mlp_in" else 2)


@torch.no_grad()
def capture_layers(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   layers: Sequence[int], sites: Sequence[str] = ()) -> dict[Key, torch.Tensor]:
    """Run ``lm`` on a padded batch and return ``{L: hidden_states[L]}`` plus ``{site: activations}``, each
    ``[B, T, d]`` in the model's dtype on its device, stopping the forward pass after the deepest point.

    Sites: ``mlp_in.L`` is the input of block L's MLP (the post-attention norm's output in Llama-likes),
    captured with a forward pre-hook on the MLP; ``mlp_out.L`` its output, with a forward hook."""
    layers = check_layers(layers, lm.n_layers) if layers else []
    sites = check_sites(sites, lm.n_layers)
    if not layers and not sites:
        raise BitlensError("no layers requested")
    captured: dict[Key, torch.Tensor] = {}
    deepest = max([*layers, *sites], key=lambda k: _depth(k, lm.n_layers))
    handles = []

    def keep(layer: Key, hidden: torch.Tensor) -> None:
        captured[layer] = hidden.detach()
        if layer == deepest:
            raise _StopForward

    for site in sites:
        kind, layer = parse_site(site)
        if kind == "mlp_in":
            def mlp_pre(_module, args, kwargs, site=site):
                keep(site, args[0] if args else next(iter(kwargs.values())))
            handles.append(mlp_module(lm, layer).register_forward_pre_hook(mlp_pre, with_kwargs=True))
        else:
            def mlp_post(_module, _args, output, site=site):
                keep(site, output[0] if isinstance(output, tuple) else output)
            handles.append(mlp_module(lm, layer).register_forward_hook(mlp_post))

    for layer in layers:
        if layer < lm.n_layers:
            # The block's input is hidden_states[layer]; models pass it positionally or by keyword.
            def pre_hook(_module, args, kwargs, layer=layer):
                keep(layer, args[0] if args else kwargs["hidden_states"])
            handles.append(lm.blocks[layer].register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:
            def post_hook(_module, _args, output, layer=layer):
                keep(layer, output[0] if isinstance(output, tuple) else output.last_hidden_state)
            handles.append(lm.model.base_model.register_forward_hook(post_hook))
    try:
        lm.model(input_ids=input_ids.to(lm.device), attention_mask=attention_mask.to(lm.device), use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [key for key in [*layers, *sites] if key not in captured]
    if missing:
        raise BitlensError(f"{missing[0]} was not reached in {type(lm.model).__name__}'s forward pass")
    return captured


# ----------------------------------------------------------------------------------------------- driver


def extract_to_store(lm: LoadedModel, corpus: Corpus, out: str | Path, *, layers: Sequence[int],
                     max_seq_len: int = 256, forward_batch: int = 16, dtype: str = "float16",
                     max_tokens: int | None = None, include_first: bool = False, shard_rows: int = 65536,
                     order_seed: int | None = 0, overwrite: bool = False, progress: bool = True,
                     extra_settings: dict | None = None, sites: Sequence[str] = (), rank: int = 0,
                     world_size: int = 1) -> Path:
    """Extract ``layers`` for the corpus into the store folder ``out`` and return its path.

    Documents are processed in a seeded random order (``order_seed``; None keeps corpus order), so a
    ``max_tokens`` budget samples the whole corpus rather than its first documents. A store left
    unfinished by an interruption with the same settings is resumed from its last committed shard;
    different settings are refused unless ``overwrite``. With ``world_size`` > 1 this process extracts only the
    documents ``order[rank::world_size]`` (one part of a store extracted under torchrun, ``parallel_extract``).
    """
    layers = check_layers(layers, lm.n_layers) if layers or not sites else []
    sites = check_sites(sites, lm.n_layers)
    if max_seq_len < 2 or forward_batch < 1 or shard_rows < 1 or (max_tokens is not None and max_tokens < 1):
        raise BitlensError("max_seq_len must be >= 2 and forward_batch, shard_rows, max_tokens >= 1")
    exclude_first = not include_first  # the store's settings record it under this name (docs/data.md)
    n_docs = len(corpus.documents)
    order = (np.random.default_rng(order_seed).permutation(n_docs) if order_seed is not None
             else np.arange(n_docs))
    settings = {"model": lm.describe(), "corpus": {"name": corpus.name, "fingerprint": corpus.fingerprint,
                                                    "n_documents": n_docs},
                "layers": layers, "dtype": dtype, "max_seq_len": max_seq_len, "exclude_first": exclude_first,
                "order_seed": order_seed, "max_tokens": max_tokens, **(extra_settings or {})}
    if sites:  # only when used, so stores written before sites existed keep their settings (and resume)
        settings["sites"] = sites
    if world_size > 1:  # one part of a store extracted by several processes
        settings["part"] = {"rank": rank, "processes": world_size}
    writer = StoreWriter.open(out, settings=settings, layers=layers, dim=lm.d_model, dtype=dtype,
                              shard_rows=shard_rows, overwrite=overwrite,
                              documents=lambda: _document_table(corpus, order),
                              token_texts=lambda: token_texts(lm.tokenizer), sites=sites)
    if writer.complete:
        log.info("store %s is already complete (%d tokens)", out, writer.n_tokens)
        return Path(out)
    special_ids = set(lm.tokenizer.all_special_ids)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    bar = _progress(progress, max_tokens, writer.n_tokens)
    sequences = iter_sequences(lm.tokenizer, corpus.documents, order[rank::world_size], max_seq_len,
                               start=writer.cursor)
    done = max_tokens is not None and writer.n_tokens >= max_tokens  # killed between last shard and finish
    try:
        while not done:
            batch = _take(sequences, forward_batch)
            if not batch:
                break
            ids, mask = pad_batch(batch, pad_id)
            keep, meta, excluded = keep_mask_and_meta(batch, ids.shape[1], special_ids, exclude_first)
            hidden = capture_layers(lm, ids, mask, layers, sites)
            keep_dev = keep.to(lm.device)
            acts = {layer: h[keep_dev].float().cpu().numpy() for layer, h in hidden.items()}
            last = batch[-1]
            cursor = (last.doc_pos, last.chunk + 1)
            before = writer.n_tokens
            done = writer.add(acts, meta, cursor=cursor, excluded=excluded,
                              sequences=len(batch), max_tokens=max_tokens)
            if bar is not None:
                bar.update(writer.n_tokens - before)
                bar.set_postfix(docs=f"{last.doc_pos + 1}/{n_docs}", refresh=False)
        writer.finish()
    finally:
        if bar is not None:
            bar.close()  # ends the bar's line, so an error message starts on a line of its own
    return Path(out)


def _take(it: Iterator[TokenSequence], n: int) -> list[TokenSequence]:
    out = []
    for item in it:
        out.append(item)
        if len(out) == n:
            break
    return out


def _document_table(corpus: Corpus, order: np.ndarray) -> list[dict]:
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return [{"index": i, "id": d.id, "order": int(rank[i]), "n_sentences": len(d.sentences), **d.meta}
            for i, d in enumerate(corpus.documents)]


def _progress(enabled: bool, max_tokens: int | None, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=max_tokens, initial=initial, unit="tok", unit_scale=True, desc="extract",
                file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------- CLI


@dataclass
class ExtractConfig(Serializable):
    """Settings of `bitlens extract`."""

    out: str = "runs/activations"
    """Activation store folder to write; an unfinished store with the same settings is resumed."""
    model: str = "embedded"
    """Causal LM: 'embedded' (SmolLM2-135M-Instruct), a local folder, a .gguf file or a Hugging Face hub id."""
    gguf_file: str = ""
    """GGUF file name inside the model folder, for GGUF models given as a folder."""
    corpus: str = "embedded"
    """Text: 'embedded' (State of the Union + Moby-Dick), 'sotu', 'moby-dick', a .txt/.md file or folder, a .jsonl file, or a HF dataset name."""
    text_field: str = "text"
    """Field holding the text in JSONL records / dataset rows."""
    layers: list[int] = field(default_factory=list)
    """Layers to store; layer L is hidden_states[L], the residual stream entering block L (0 = embeddings). Default: the middle layer (none when sites are given)."""
    sites: list[str] = field(default_factory=list)
    """Named sites to store as well: mlp_in.L (input of block L's MLP, after the post-attention norm) and mlp_out.L (that MLP's output), e.g. for transcoders."""
    max_tokens: int = 0
    """Stop after storing this many tokens (0 = the whole corpus)."""
    max_seq_len: int = 256
    """Tokens per model input; documents are packed by whole sentences up to this length."""
    forward_batch: int = 16
    """Sequences per forward pass of the LM."""
    dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of activations."""
    model_dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Dtype the model runs in."""
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto."""
    include_first: bool = False
    """Also store position 0 of each sequence (excluded by default: its norm is thousands of times larger)."""
    shard_rows: int = 65536
    """Tokens per shard file; a shard is the unit of resumption after an interruption."""
    seed: int = 0
    """Seed of the document order (documents are processed in a seeded random order)."""
    overwrite: bool = False
    """Replace an existing store made with different settings."""
    progress: bool = True
    """Show a progress bar."""


def extract_main(cfg: ExtractConfig) -> Path:
    """Run `bitlens extract`: load the model and corpus, extract, print a one-line summary."""
    started = time.perf_counter()
    check_out_dir(cfg.out)  # before loading anything
    from .parallel_extract import launch

    device, world = cfg.device, launch()
    if world.size > 1 and device.strip().lower() in ("cuda", "auto") and torch.cuda.is_available():
        if world.local_rank >= torch.cuda.device_count():
            raise BitlensError(f"local rank {world.local_rank} needs GPU {world.local_rank} but torch sees "
                               f"{torch.cuda.device_count()}: start at most that many processes per node")
        device = f"cuda:{world.local_rank}"  # under torchrun each process drives its own GPU
    lm = load_model(cfg.model, gguf_file=cfg.gguf_file or None, dtype=cfg.model_dtype, device=device)
    layers = cfg.layers or ([] if cfg.sites else [lm.n_layers // 2])
    if layers:
        check_layers(layers, lm.n_layers)  # fail before loading a large corpus
    check_sites(cfg.sites, lm.n_layers)
    corpus = load_corpus(cfg.corpus, text_field=cfg.text_field)
    from .parallel_extract import merge_parts

    if world.size > 1:
        return merge_parts(cfg, lm, corpus, layers, world, started, extract_to_store)
    out = extract_to_store(lm, corpus, cfg.out, layers=layers, max_seq_len=cfg.max_seq_len,
                           forward_batch=cfg.forward_batch, dtype=cfg.dtype, max_tokens=cfg.max_tokens or None,
                           include_first=cfg.include_first, shard_rows=cfg.shard_rows, order_seed=cfg.seed,
                           overwrite=cfg.overwrite, sites=cfg.sites, progress=cfg.progress)
    from .store import ActivationStore

    store = ActivationStore(out)
    log.info(f"wrote {store.n_tokens} tokens x {store.dim} dims, layers {store.layers}"
             f"{', sites ' + str(store.sites) if store.sites else ''}, "
             f"{len(store.documents)} documents to {out} in {time.perf_counter() - started:.1f}s")
    return out


__all__ = ["ExtractConfig", "extract_main", "extract_to_store", "capture_layers", "check_layers",
           "iter_sequences", "document_sequences", "special_prefix"]
