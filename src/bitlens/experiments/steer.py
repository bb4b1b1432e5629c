"""`bitlens steer`: in-context-learning steering with feature task vectors (paper.md section 11, label leak fixed).

Per task: items are split into a demonstration pool, estimation queries and held-out evaluation queries (disjoint;
``bitlens.data.steer_tasks``). The last-token state at layer L (``hidden_states[L]``) of each estimation query's
k-shot prompt ("good") and 0-shot prompt ("bad") gives every coder's task vector and the centroid baseline
(``bitlens.analysis.steering``). Then each evaluation query's 0-shot prompt is run with strength * tv added to the
residual stream entering block L at the last token only, and scored by accuracy over the label set (95% Wilson
interval) and top-1 over the vocabulary; the unsteered 0-shot and the k-shot accuracies on the same queries are the
references. With ``normalize`` (default) every tv has the centroid's norm, so a strength means the same for all
methods. Each task's result is cached in ``<out>/<task>.json`` with the settings it was made with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..analysis.intervals import wilson
from ..analysis.steering import TaskVector, centroid_vector, coder_vector, rescaled
from ..config import Serializable
from ..data.steer_tasks import SteerTaskName
from ..io import BitlensError, read_json_object, write_json, write_manifest

log = logging.getLogger("bitlens")
DEFAULT_TASKS = ["capital", "first_letter"]  # the two largest k=8 over k=0 gains on SmolLM2-135M (BENCHMARKS.md)


@dataclass
class SteerConfig(Serializable):
    """Settings of `bitlens steer`."""

    coder: str
    """A coder bitlens can load (run or checkpoint folder), or a `bitlens compare` folder: steer with each coder."""
    store: str = ""
    """Activation store the coder was trained on: gives the model and the layer (or give --model and --layer)."""
    model: str = ""
    """Causal LM ('embedded', a folder or a hub id); default: the store's model."""
    layer: int | None = None
    """Layer L: tv is added to hidden_states[L] (the input of block L); default: the store's only layer."""
    tasks: list[SteerTaskName] = field(default_factory=lambda: list(DEFAULT_TASKS))
    """Tasks: built-in first_letter, upper, antonym, number, capital (see BENCHMARKS.md for which ones SmolLM2-135M
    learns in context: the default pair gains the most), or the corpus tasks spam, party, source."""
    out: str = "runs/steer"
    """Output folder: steer.json, steer.png, one cached <task>.json per task, manifest.json."""
    k: int = 8
    """Demonstrations of the good (k-shot) prompts and of the k-shot reference."""
    n_estimate: int = 48
    """Estimation queries per task (their good and bad prompts give the task vectors)."""
    n_evaluate: int = 48
    """Held-out evaluation queries per task (disjoint from the estimation queries and the demonstration pool)."""
    top_k: int = 20
    """Units kept per coder: the top-k by |Delta| (the reference's default)."""
    strengths: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    """Multiples of tv added at the last token (with --normalize: multiples of the centroid's norm); negative
    values steer against the task."""
    normalize: bool = True
    """Rescale every tv to the norm of the centroid baseline (as in the reference's plotted runs)."""
    max_chars: int = 200
    """Corpus tasks: each example's text is cut to this many characters."""
    forward_batch: int = 16
    """Prompts per forward pass."""
    seed: int = 0
    """Seed of the item split and the demonstration sampling."""
    device: str = "cpu"
    """Device for the LM and the coders: cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_estimate < 2 or self.n_evaluate < 1 or self.top_k < 1 or self.forward_batch < 1:
            raise ValueError("k, top_k and forward_batch must be >= 1, n_estimate >= 2 and n_evaluate >= 1")


def resolve_coders(path: str | Path) -> dict[str, Path]:
    """name -> checkpoint folder: one coder, or every coder of a `bitlens compare` folder (``coders/<name>``)."""
    from ..coders.registry import find_checkpoint

    path = Path(path)
    try:
        return {path.name if path.name != "checkpoint" else path.parent.name: find_checkpoint(path)}
    except BitlensError:
        pass
    found = {}
    for sub in sorted((path / "coders").glob("*")) if (path / "coders").is_dir() else []:
        try:
            found[sub.name] = find_checkpoint(sub)
        except BitlensError:
            log.warning("%s holds no finished coder; skipped", sub)
    if not found:
        raise BitlensError(f"no coder at {path}: give a coder's run or checkpoint folder, or a compare folder")
    return found


def answer_tokens(tokenizer, answers: list[str]) -> tuple[list[int], str]:
    """(first answer token of each answer as it follows the prompt, suffix the prompt must end with): answers whose
    first token is a bare space (SmolLM2's digits) are read after a prompt ending in that space."""
    pieces = [tokenizer(" " + a, add_special_tokens=False)["input_ids"] for a in answers]
    bare = [len(p) > 1 and tokenizer.decode(p[:1]).strip() == "" for p in pieces]
    if all(bare):
        return [p[1] for p in pieces], " "
    return [p[0] for p in pieces], ""


@torch.no_grad()
def run_prompts(lm, texts: list[str], layer: int, batch: int, add: torch.Tensor | None = None,
                progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(states [n, d] float32: hidden_states[layer] at each prompt's last token, logits [n, vocab] there).
    With ``add`` [d], that vector is added to the input of block ``layer`` at the last token of every prompt."""
    tok = lm.tokenizer
    block = lm.blocks[layer]
    last_pos: list[torch.Tensor] = []

    def inject(_m, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        h = h.clone()
        rows = torch.arange(h.shape[0], device=h.device)
        h[rows, last_pos[0]] += add.to(h.device, h.dtype)
        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

    handle = block.register_forward_pre_hook(inject, with_kwargs=True) if add is not None else None
    states, logits = [], []
    try:
        for start in tqdm(range(0, len(texts), batch), desc="prompts", disable=not progress, leave=False):
            enc = tok(texts[start:start + batch], return_tensors="pt", padding=True)
            ids, mask = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)
            if (mask[:, 0] == 0).any():
                raise BitlensError("the tokenizer pads on the left; steering needs right padding")
            last = mask.sum(1) - 1
            last_pos[:] = [last]
            out = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
            rows = torch.arange(ids.shape[0], device=ids.device)
            states.append(out.hidden_states[layer][rows, last].float().cpu())
            logits.append(out.logits[rows, last].float().cpu())
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(states), torch.cat(logits)


def score(logits: torch.Tensor, label_ids: list[int], truth: list[int]) -> dict[str, Any]:
    """Accuracy over the label set (distinct first answer tokens) with its 95% interval, and top-1 over the vocab."""
    label_set = sorted(set(label_ids))
    picked = torch.tensor(label_set)[logits[:, label_set].argmax(1)]
    target = torch.tensor([label_ids[t] for t in truth])
    n, hits = len(truth), int((picked == target).sum())
    lo, hi = wilson(hits, n)
    return {"accuracy": hits / n, "ci95": [lo, hi], "top1": float((logits.argmax(1) == target).float().mean()),
            "n": n}


def _load_task(name: str, max_chars: int):
    from ..data.icl_tasks import load_task
    from ..data.steer_tasks import BUILTIN_TASKS, builtin_task

    return builtin_task(name) if name in BUILTIN_TASKS else load_task(name, max_chars)


def prompt_texts(task, queries, pool, k: int, seed: int, tag: int, suffix: str) -> list[str]:
    from ..data.icl_tasks import build_prompt
    from ..data.steer_tasks import sample_pool

    texts = []
    for qi, query in enumerate(queries):
        demos = sample_pool(pool, k, np.random.default_rng([seed, k, qi, tag])) if k else []
        if any(pool[i].group == query.group for i in demos):  # the split makes this impossible
            raise AssertionError("a demonstration shares the query's group")
        texts.append(build_prompt(task, [pool[i] for i in demos], query) + suffix)
    return texts


def steer_task(lm, coders: dict[str, torch.nn.Module], task, layer: int, cfg: SteerConfig) -> dict[str, Any]:
    """Estimate every method's task vector on ``task`` and measure steering on its held-out queries."""
    from ..data.steer_tasks import split_items

    # a pool of at least 2k items, so the k demonstrations of different prompts differ
    split = split_items(task, cfg.seed, cfg.n_estimate, cfg.n_evaluate, min_pool=max(8, 2 * cfg.k))
    if len(split.pool) < cfg.k:
        raise BitlensError(f"task {task.name}: the pool holds {len(split.pool)} items, fewer than k = {cfg.k}")
    label_ids, suffix = answer_tokens(lm.tokenizer, task.labels)
    index = {label: i for i, label in enumerate(task.labels)}
    truth = [index[q.label] for q in split.evaluate]
    run = lambda texts, add=None: run_prompts(lm, texts, layer, cfg.forward_batch, add, cfg.progress)  # noqa: E731
    good, _ = run(prompt_texts(task, split.estimate, split.pool, cfg.k, cfg.seed, 0, suffix))
    bad, _ = run(prompt_texts(task, split.estimate, split.pool, 0, cfg.seed, 0, suffix))
    zero_texts = prompt_texts(task, split.evaluate, split.pool, 0, cfg.seed, 1, suffix)
    _, zero_logits = run(zero_texts)
    _, k_logits = run(prompt_texts(task, split.evaluate, split.pool, cfg.k, cfg.seed, 1, suffix))
    centroid = centroid_vector(good, bad)
    vectors: dict[str, TaskVector] = {"centroid": centroid}
    for name, coder in coders.items():
        tv = coder_vector(coder, good, bad, cfg.top_k)
        vectors[name] = rescaled(tv, centroid.raw_norm) if cfg.normalize else tv
    methods = {}
    for name, tv in vectors.items():
        curve = []
        for strength in cfg.strengths:
            _, logits = run(zero_texts, strength * tv.vector)
            curve.append({"strength": strength, **score(logits, label_ids, truth)})
        best = max(curve, key=lambda c: (c["accuracy"], -abs(c["strength"])))
        methods[name] = {"units": tv.units, "deltas": tv.deltas, "raw_norm": tv.raw_norm,
                         "norm": float(tv.vector.norm()), "curve": curve, "best": best}
    return {"labels": task.labels, "n_labels": len(set(label_ids)), "source": task.source,
            "answer_suffix": suffix, "pool": len(split.pool), "n_estimate": len(split.estimate),
            "n_evaluate": len(split.evaluate), "zero_shot": score(zero_logits, label_ids, truth),
            "k_shot": score(k_logits, label_ids, truth), "methods": methods}


def run_steer(cfg: SteerConfig) -> dict[str, Any]:
    from ..coders.registry import load
    from ..data.models import load_model
    from .plots import plot_steer

    names = list(dict.fromkeys(cfg.tasks))
    if not names:
        raise BitlensError("no task to steer on")
    model_name, layer, store_settings = cfg.model, cfg.layer, None
    if cfg.store:
        from ..data.store import ActivationStore

        store = ActivationStore(cfg.store)
        layer = store.default_layer(cfg.layer)
        store_settings = store.manifest.get("settings")
        model_name = model_name or str((store_settings or {}).get("model", {}).get("name", ""))
    if not model_name or layer is None or not isinstance(layer, int):
        raise BitlensError("steering needs a model and a residual layer: give a store, or a model and a layer")
    coders = {}
    for name, folder in resolve_coders(cfg.coder).items():
        coder = load(folder, cfg.device)
        if coder.architecture == "transcoder":
            log.warning("%s is a transcoder (it does not write the residual stream); skipped", name)
            continue
        coders[name] = coder
    lm = load_model(model_name, device=cfg.device)
    if not 0 <= layer < lm.n_layers:
        raise BitlensError(f"layer {layer}: steering adds to the input of a block, this model has blocks 0..{lm.n_layers - 1}")
    for name, coder in coders.items():
        if coder.d_in != lm.d_model:
            raise BitlensError(f"coder {name} reads {coder.d_in}-dimensional vectors, the model's are {lm.d_model}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**cfg.to_dict(), "tasks": None, "progress": None, "device": None, "layer": layer,
                "model": model_name, "coders": {n: str(p) for n, p in resolve_coders(cfg.coder).items()}}
    write_manifest(out, command="steer", config=settings, seeds={"seed": cfg.seed},
                   inputs={"model": lm.describe(), "store_settings": store_settings})
    results = {}
    for name in names:
        cached = out / f"{name}.json"
        if cached.is_file():
            saved = read_json_object(cached)
            if saved.get("settings") == settings:
                results[name] = saved["result"]
                continue
        log.info("steer: task %s", name)
        results[name] = steer_task(lm, coders, _load_task(name, cfg.max_chars), layer, cfg)
        write_json(cached, {"settings": settings, "result": results[name]})
    summary = {"model": model_name, "layer": layer, "k": cfg.k, "top_k": cfg.top_k, "normalize": cfg.normalize,
               "coders": list(coders), "metric": "accuracy over the label set (first answer tokens), 95% Wilson "
               "interval; top1 over the vocabulary", "tasks": results}
    write_json(out / "steer.json", summary)
    plot_steer(results, out / "steer.png")
    return summary
