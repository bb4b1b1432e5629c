"""The short Python API, for notebooks and scripts: extract, train, load, estimate entropy, splice.

    import bitlens
    store = bitlens.extract("embedded", "moby-dick", layers=[3], max_tokens=12000)  # or a list of strings
    bae = bitlens.train(store, steps=200, batch_size=256)
    codes = bitlens.encode_all(bae, store.view(3).rows())
    print(bitlens.estimate_entropy(codes).marginal_bits, "bits")

Everything here is a thin wrapper over the modules the CLI uses; nothing prints (progress goes through ``logging``
and tqdm bars) and errors are ``BitlensError`` with one line of text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .coders.bae import BAEConfig, BinaryAutoencoder
from .io import BitlensError
from .training.config import LossConfig, TrainConfig, apply_preset


def extract(model: Any, texts: Any, layers: Sequence[int], out: str | Path | None = None, *,
            tokenizer: Any = None, max_tokens: int | None = None, max_seq_len: int = 256, forward_batch: int = 16,
            dtype: str = "float32", include_first: bool = False, device: str = "cpu", progress: bool = True):
    """Hidden states of ``layers`` (``hidden_states[L]``) of a causal LM over some text, as an activation store.

    ``model``: a Hugging Face causal LM already loaded (its tokenizer: ``tokenizer=``, else the one saved beside its
    weights), a ``LoadedModel``, or a name that ``bitlens extract`` accepts ('embedded', a folder, a .gguf file, a
    hub id). ``texts``: a list of strings (one
    document each), a ``Corpus``, or a corpus name. ``out``: the store folder (default: a new temporary folder).
    Returns the ``ActivationStore``; ``store.view(layer).rows()`` gives the rows as a float32 tensor [n, d].
    """
    from .data.corpora import Corpus, load_corpus
    from .data.extract import extract_to_store
    from .data.store import ActivationStore

    lm = _loaded_model(model, device, tokenizer)
    if isinstance(texts, str):
        corpus = load_corpus(texts)
    elif isinstance(texts, Corpus):
        corpus = texts
    else:
        corpus = Corpus.from_texts(list(texts))
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="bitlens-store-"))
    path = extract_to_store(lm, corpus, out, layers=list(layers), max_tokens=max_tokens, max_seq_len=max_seq_len,
                            forward_batch=forward_batch, dtype=dtype, include_first=include_first,
                            progress=progress, overwrite=out.exists() and not (out / "manifest.json").exists())
    return ActivationStore(path)


def _loaded_model(model: Any, device: str, tokenizer: Any = None):
    from .data.models import LoadedModel, load_model, wrap_model

    if isinstance(model, (str, Path)):
        return load_model(str(model), device=device)
    if isinstance(model, LoadedModel):
        return model
    return wrap_model(model, tokenizer)


def train(data: Any, out_dir: str | Path | None = None, *, layer: int | None = None, preset: str | None = None,
          bae: BAEConfig | None = None, train: TrainConfig | None = None, loss: LossConfig | None = None,
          **options: Any) -> BinaryAutoencoder:
    """Train a BAE and return it (eval mode).

    ``data``: rows (a float tensor or array [n, d]), an ``ActivationStore`` or a store folder (split by document),
    or a .npy / .safetensors file. ``out_dir``: the run folder (default: a temporary folder; the trained coder is
    returned either way). ``options`` set fields of ``BAEConfig``, ``TrainConfig`` or ``LossConfig`` by name, e.g.
    ``steps=2000, entropy_weight=1.0``; ``preset='paper'`` starts from the official recipe.
    """
    configs = [bae or BAEConfig(), train or TrainConfig(progress=False), loss or LossConfig()]
    if preset is not None:
        configs = list(apply_preset(preset, *configs))
    for i, cfg in enumerate(configs):
        names = {f.name for f in dataclasses.fields(cfg)}
        mine = {k: options.pop(k) for k in list(options) if k in names}
        configs[i] = dataclasses.replace(cfg, **mine)
    if options:
        raise BitlensError(f"unknown training option(s) {', '.join(sorted(options))}")
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="bitlens-run-"))
    train_run(data, out, layer=layer, bae=configs[0], train=configs[1], loss=configs[2])
    from .coders.registry import load

    return load(out).eval()


def train_run(data: Any, out_dir: str | Path, *, layer: int | None = None, key: str | None = None,
              keep_outliers: bool = False, bae: BAEConfig | None = None, train: TrainConfig | None = None,
              loss: LossConfig | None = None, resume: bool = False,
              resume_overrides: dict[str, Any] | None = None, allow_new_data: bool = False) -> dict[str, Any]:
    """Train (or resume) a BAE into ``out_dir`` and return its final validation statistics (what the CLI's
    ``train`` does). ``data`` as for ``train``. Resuming on data the run has not seen is refused unless
    ``allow_new_data``."""
    from .data.sources import load_activations, split_rows
    from .data.store import ActivationStore
    from .io import check_out_dir, file_fingerprint
    from .training.run import train_bae

    check_out_dir(out_dir)
    train = train or TrainConfig()
    store = data if isinstance(data, ActivationStore) else None
    if store is None and isinstance(data, (str, Path)) and Path(data).is_dir():
        store = ActivationStore(data)
    if store is not None:
        layer = store.default_layer(layer)
        tr, va = store.split(train.val_fraction, train.seed, layer, keep_outliers=keep_outliers)  # by document
        inputs = {"store": str(store.path), "layer": layer, "store_settings": store.manifest.get("settings"),
                  "sha256": file_fingerprint(store.path / "manifest.json"),  # its settings, shards and statistics
                  "outliers_left_out": 0 if keep_outliers else int(store.outliers(layer).sum()),
                  "train_tokens": tr.n_rows, "val_tokens": va.n_rows, "finite_check": store.finite_checks[layer]}
    elif isinstance(data, (str, Path)):
        x = load_activations(data, key)
        tr, va = split_rows(x, train.val_fraction, train.seed)
        inputs = {"activations": str(data), "sha256": file_fingerprint(data), "rows": int(x.shape[0]),
                  "dim": int(x.shape[1]), **({"key": key} if key else {})}
    else:
        x = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
        if x.ndim != 2 or not torch.is_floating_point(x) or x.shape[0] < 2:
            raise BitlensError(f"rows must be a float array [n, d] with n >= 2, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise BitlensError("rows contain NaN or infinite values")
        tr, va = split_rows(x.float(), train.val_fraction, train.seed)
        inputs = {"rows": int(x.shape[0]), "dim": int(x.shape[1]), "source": "in-memory rows"}
    _, stats = train_bae(tr, va, out_dir, bae, train, loss, resume=resume, resume_overrides=resume_overrides,
                         inputs=inputs, allow_new_data=allow_new_data)
    return stats


def train_from_model(model: str, corpus: str, out_dir: str | Path, *, layer: int | None = None,
                     max_tokens: int = 0, max_seq_len: int = 256, forward_batch: int = 16, buffer_rows: int = 65536,
                     model_dtype: str = "float32", text_field: str = "text", bae: BAEConfig | None = None,
                     train: TrainConfig | None = None, loss: LossConfig | None = None, resume: bool = False,
                     resume_overrides: dict[str, Any] | None = None, allow_new_data: bool = False) -> dict[str, Any]:
    """Train (or resume) a BAE on hidden states computed on the fly, without a store (``bitlens train --model M
    --corpus C``): the LM runs over the training documents into a shuffling buffer (``data.stream``), under
    torchrun each rank over its own document shard; ``max_tokens`` training tokens per pass (0 = the whole
    corpus). Validation: up to ``train.eval_tokens`` rows of held-out documents (rank 0). Returns the final
    validation statistics."""
    from .data.corpora import load_corpus
    from .data.models import load_model
    from .data.sources import TensorRows
    from .data.stream import ModelStream, model_rows, split_documents
    from .io import check_out_dir
    from .training.distributed import current_world
    from .training.run import train_bae

    check_out_dir(out_dir)
    train = train or TrainConfig()
    world = current_world(train.device)
    lm = load_model(model, dtype=model_dtype, device=world.device(train.device))
    layer = lm.n_layers // 2 if layer is None else layer
    texts = load_corpus(corpus, text_field=text_field)
    train_docs, val_docs = split_documents(len(texts.documents), train.val_fraction, train.seed)
    options = dict(max_seq_len=max_seq_len, forward_batch=forward_batch)
    stream = ModelStream(lm, texts, layer, train_docs, max_tokens=max_tokens, buffer_rows=buffer_rows,
                         seed=train.seed, rank=world.rank, world_size=world.size, **options)
    val = None
    if world.main and len(val_docs) and train.eval_tokens > 0:
        val = TensorRows(model_rows(lm, texts, layer, val_docs, train.eval_tokens, **options))
    source = {"model": lm.describe(), "corpus": {"name": texts.name, "fingerprint": texts.fingerprint},
              "layer": layer, "max_tokens": max_tokens, "max_seq_len": max_seq_len,
              "buffer_rows": buffer_rows}  # what the rows and their order depend on (resume checks it)
    import hashlib
    import json

    inputs = {"on_the_fly": source, "source": f"{model} on {corpus}", "layer": layer,
              "sha256": hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest(),
              "train_documents": len(train_docs), "val_documents": len(val_docs),
              "val_tokens": val.n_rows if val is not None else 0}
    _, stats = train_bae(stream, val, out_dir, bae, train, loss, resume=resume, resume_overrides=resume_overrides,
                         inputs=inputs, allow_new_data=allow_new_data)
    return stats


@contextlib.contextmanager
def splice(model: Any, coder: torch.nn.Module, layer: int, positions: str = "all") -> Iterator[None]:
    """Run ``coder`` inside a live model: within the block, the residual stream entering block ``layer``
    (``hidden_states[layer]``) is replaced by the coder's reconstruction, at every position or only the last one
    (``positions='last'``). ``model``: a Hugging Face causal LM or a ``LoadedModel``.

        with bitlens.splice(lm, bae, layer=15):
            logits = lm.model(**batch).logits
    """
    from .analysis.splice import spliced

    from .data.models import LoadedModel, wrap_model

    lm = model if isinstance(model, LoadedModel) else wrap_model(model, need_tokenizer=False)
    with spliced(lm, coder, layer, positions):
        yield


def demo(cfg: Any = None, echo: Any = None) -> dict[str, Any]:
    """``bitlens demo``: extract, train a BAE and summarise (``experiments.demo``), then, unless
    ``cfg.dashboard`` is off, write the feature dashboard into ``OUT/dashboard`` and pick a handful of distinctive
    features from it. Returns the summary (also in ``OUT/summary.json``); ``experiments.demo.report`` formats it."""
    import logging

    from .experiments.demo import DemoConfig, distinctive, run_demo
    from .io import write_json

    cfg = cfg or DemoConfig()
    echo = echo or logging.getLogger("bitlens.experiments.demo").info
    summary = run_demo(cfg, echo=echo)
    if cfg.dashboard:
        from .report.dashboard import DashboardConfig, run_dashboard

        out = Path(cfg.out)
        echo("[4/4] writing the feature dashboard")
        dash = run_dashboard(DashboardConfig(coder=str(out / "bae"), store=str(out / "activations"),
                                             out=str(out / "dashboard"), seed=cfg.seed, device=cfg.device,
                                             progress=cfg.progress), echo=echo)
        summary["dashboard"] = str(dash.index)
        summary["distinctive_features"] = distinctive(dash.summary["features"], cfg.show)
        write_json(out / "summary.json", summary)
    return summary
