"""`bitlens entropy icl`: entropy of the last prompt token's hidden state against the number of demonstrations k,
with the model's ICL accuracy beside it.

For each task and k the same balanced queries are each given k freshly sampled demonstrations
(``bitlens.data.icl_tasks``). One forward pass per prompt gives the hidden states of the last token (the label
prefix's final token, e.g. ':') at the chosen layers and the next-token logits of the label words' first tokens;
the prediction is the label with the largest logit.

One BAE per (task, layer), shared by all k (not one per k): it trains on the last-token states of all k pooled, so
the entropies of different k are measured in one code book and differ only through the states. With a few hundred
prompts per k a BAE per k would be fitted to a few hundred vectors and its entropy would mostly reflect that.
The paper does not say which it did (per-position BAEs for ICL; details unknown). Every k uses the same number of
prompts, so the small-sample bias of the estimate is the same along the curve.

What each BAE trains on (``--fit-on``). ``demonstrations`` (default): the last-token states of the training queries
plus the state of the same token inside every demonstration of their prompts (the end of its label prefix, seen
after 0 .. k-1 earlier demonstrations; 15 more rows per query over k = 0, 1, 2, 4, 8). The split is by query, so no
held-out query's prompt is trained on at any k, and the target is held on the held-out queries' last-token states
(thirteenth session: 12 of 12 BAEs within 0.01 of a target of 0.2 with 512 queries, 7 of 12 with 256).
``last``: the last-token states alone, one per prompt, split by prompt; a code of 4d units fits a few hundred of
them and ends far above its target on held-out prompts (tenth session: 12 of 12 at FVU 0.13-0.58). The entropies
are always those of the last token. (Other tokens of the prompts were tried and dropped: a code fitted to them
spends its bits on the variation between tokens; BENCHMARKS.md, issue 12, eleventh session.)

Resume: the states and logits of each (task, k) are saved as .npy files once computed; finished BAEs are not redone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Serializable
from ..data.icl_tasks import TaskName
from ..data.sources import TensorRows
from ..io import BitlensError, atomic_path, write_json, write_manifest
from ..training.config import DEFAULT_TARGET_FVU, llm_loss
from .unit_bae import UnitTraining, fit_unit

log = logging.getLogger(__name__)


@dataclass
class ICLConfig(Serializable):
    """Settings of `bitlens entropy icl`."""

    out: str = "runs/icl"
    """Output folder: icl.json, icl.png, prompts and states per task and k, one BAE per task and layer."""
    model: str = "embedded"
    """Causal LM: 'embedded' (SmolLM2-135M-Instruct), a local folder or a Hugging Face hub id."""
    tasks: list[TaskName] = field(default_factory=lambda: ["spam", "party"])
    """Tasks: spam (SpamAssassin), party (State of the Union, Democratic/Republican), source (SOTU vs Moby-Dick)."""
    ks: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    """Numbers of demonstrations."""
    n_queries: int = 512
    """Queries per task (balanced across labels); every k uses the same queries. Each BAE is checked on a tenth of
    them: 512 (the measured setting: 12 of 12 BAEs within 0.01 of the target, against 7 of 12 with 256; 25 min in
    all for 2 tasks on a 2-core Xeon, most of it forward passes) holds out 51."""
    layers: list[int] = field(default_factory=list)
    """Layers whose last-token state is analysed (default: every fifth layer, 5, 10, ...)."""
    max_chars: int = 200
    """Each example's text is cut to this many characters (at a word boundary)."""
    steps: int = 300
    """Training steps of each (task, layer) BAE."""
    fit_on: Literal["last", "demonstrations"] = "demonstrations"
    """Rows each (task, layer) BAE trains on: demonstrations = the training queries' last-token states and the state
    at the end of every demonstration's label prefix (the same token), split by query; last = the last-token states
    alone, split by prompt (256 queries: 0 of 12 BAEs within 0.01 of the target, against 7 of 12; README, entropy
    icl). The entropies are those of the last token either way."""
    expansion: int = 4
    """Code size d' = expansion * d of each (task, layer) BAE. It trains on a few thousand states at most (90% of
    the queries' last tokens and demonstrations), so a wide code can fit the training prompts and end above its
    target on the held-out ones (see README, entropy icl)."""
    target_fvu: float = DEFAULT_TARGET_FVU
    """Target FVU of every BAE (minimum entropy subject to FVU <= F, by dual ascent), so all bits are read at one
    stated reconstruction; 0 = the fixed weights 1 / 100."""
    batch_size: int = 256
    """Rows per BAE training step."""
    forward_batch: int = 8
    """Prompts per forward pass."""
    fixed_demonstrations: bool = False
    """Reproduce the reference code's quirk: the first k pool items as demonstrations of every prompt."""
    seed: int = 0
    """Seed of the query split, the demonstration sampling and the BAEs."""
    device: str = "cpu"
    """Device for the LM and the BAEs: cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if (self.n_queries < 4 or self.steps < 1 or self.forward_batch < 1 or self.max_chars < 20
                or self.expansion < 1):
            raise ValueError("n_queries must be >= 4, steps, expansion and forward_batch >= 1, max_chars >= 20")

    def k_list(self) -> list[int]:
        ks = sorted(set(self.ks))
        if not ks or ks[0] < 0:
            raise BitlensError("the ICL analysis needs at least one number of demonstrations, all >= 0")
        return ks

    def task_list(self) -> list[str]:
        from ..data.icl_tasks import TASK_NAMES

        names = list(dict.fromkeys(self.tasks))
        bad = [t for t in names if t not in TASK_NAMES]
        if bad or not names:
            raise BitlensError(f"unknown ICL task {bad[0] if bad else '(none)'}; choose from {', '.join(TASK_NAMES)}")
        return names


def label_token_ids(tokenizer, labels: list[str]) -> list[int]:
    """First token of each label word as it follows the label prefix (with a leading space); must differ."""
    ids = [tokenizer(" " + label, add_special_tokens=False)["input_ids"][0] for label in labels]
    if len(set(ids)) != len(ids):
        raise BitlensError(f"labels {labels} share their first token; the accuracy needs distinct first tokens")
    return ids


class PromptStates(NamedTuple):
    last: np.ndarray
    """Hidden states of each prompt's last token at the layers, float32 [n, layers, d]."""
    logits: np.ndarray
    """Next-token logits of the label words' first tokens there, float32 [n, n_labels]."""
    last_tokens: list[str]
    """Each prompt's decoded last token."""
    marked: np.ndarray
    """States of the tokens that end at the requested character offsets, float32 [m, layers, d] (m = 0 unless
    asked for)."""
    marked_prompt: np.ndarray
    """Prompt (input order) of each marked row, int64 [m]."""
    marked_tokens: list[str]
    """The decoded marked tokens, one per distinct token."""


@torch.no_grad()
def last_token_states(lm, texts: list[str], layers: list[int], label_ids: list[int], batch: int,
                      progress: bool = False, marks: list[list[int]] | None = None) -> PromptStates:
    """Hidden states of each prompt's last token at ``layers``, the next-token logits of ``label_ids`` there, the
    decoded last tokens, and (``marks``: character offsets per text) the states of the tokens that end exactly at
    those offsets (an offset inside a token is skipped)."""
    tok = lm.tokenizer
    base = lm.model.base_model
    head = lm.model.get_output_embeddings()
    states, logits, last_tokens, marked, marked_prompt, marked_ids = [], [], [], [], [], set()
    # batches of similar lengths waste little on padding; results go back to the input order at the end
    order = np.argsort([len(t) for t in texts], kind="stable")
    for start in tqdm(range(0, len(texts), batch), desc="prompts", disable=not progress, leave=False):
        chunk = [int(i) for i in order[start:start + batch]]
        enc = tok([texts[i] for i in chunk], return_tensors="pt", padding=True, return_offsets_mapping=bool(marks))
        ids, mask = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)
        out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        last = mask.sum(1) - 1  # right padding: the last real token
        rows = torch.arange(ids.shape[0], device=ids.device)
        states.append(torch.stack([out.hidden_states[layer][rows, last] for layer in layers], 1).float().cpu())
        final = out.last_hidden_state[rows, last]
        logits.append(head(final)[:, label_ids].float().cpu())
        last_tokens.extend(tok.convert_ids_to_tokens(ids[rows, last].tolist()))
        for j, prompt in enumerate(chunk if marks else []):
            ends, wanted = enc["offset_mapping"][j, :, 1].tolist(), set(marks[prompt])
            at = [t for t, e in enumerate(ends) if e in wanted and mask[j, t] and t < last[j]]
            if at:
                where = torch.tensor(at, device=ids.device)
                marked.append(torch.stack([out.hidden_states[layer][j, where] for layer in layers], 1).float().cpu())
                marked_prompt.append(np.full(len(at), prompt, dtype=np.int64))
                marked_ids.update(ids[j, where].tolist())
    back = np.argsort(order)
    d = states[0].shape[-1] if states else 0
    marked_rows = torch.cat(marked).numpy() if marked else np.zeros((0, len(layers), d), np.float32)
    marked_of = np.concatenate(marked_prompt) if marked_prompt else np.zeros(0, np.int64)
    by_prompt = np.argsort(marked_of, kind="stable")  # input order, and each prompt's rows in text order
    return PromptStates(torch.cat(states).numpy()[back], torch.cat(logits).numpy()[back],
                        [last_tokens[i] for i in back], marked_rows[by_prompt], marked_of[by_prompt],
                        sorted(set(tok.convert_ids_to_tokens(sorted(marked_ids)))))


def query_split(per_k: dict[int, PromptStates], ks: list[int], li: int, seed: int,
                val_fraction: float = 0.1) -> tuple[TensorRows, TensorRows]:
    """(train, validation) for layer index ``li`` with fit_on demonstrations: a seeded tenth of the queries is held
    out at every k; validation = their last-token states; training = the other queries' last-token states and the
    marked states of their prompts."""
    n = len(per_k[ks[0]].last)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    held = np.zeros(n, bool)
    held[perm[:max(1, int(round(n * val_fraction)))]] = True  # n_queries >= 4: some queries always train
    train = np.concatenate([per_k[k].last[~held, li] for k in ks]
                           + [per_k[k].marked[~held[per_k[k].marked_prompt], li] for k in ks])
    val = np.concatenate([per_k[k].last[held, li] for k in ks])
    # in random order: a source's first rows stand for all of it (the start sample, the pruning rows)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))
    return (TensorRows(torch.from_numpy(np.ascontiguousarray(train)), order),
            TensorRows(torch.from_numpy(np.ascontiguousarray(val))))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def run_icl(cfg: ICLConfig) -> dict[str, Any]:
    from ..data.icl_tasks import label_prefix_ends, load_task, make_prompts, split_task
    from ..data.models import load_model
    from ..data.sources import split_rows
    from .plots import plot_icl

    ks, task_names = cfg.k_list(), cfg.task_list()
    out = Path(cfg.out)
    lm = None
    tasks_out: dict[str, Any] = {}
    for name in task_names:
        task = load_task(name, cfg.max_chars)
        queries, pool = split_task(task, cfg.n_queries, cfg.seed)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        per_k: dict[int, PromptStates] = {}
        demos = cfg.fit_on == "demonstrations"
        for k in ks:
            states_file, logits_file = folder / f"states_k{k}.npy", folder / f"label_logits_k{k}.npy"
            demo_files = [folder / f"demonstration_states_k{k}.npy", folder / f"demonstration_prompt_k{k}.npy"]
            needed = [states_file, logits_file] + (demo_files if demos else [])
            if all(f.is_file() for f in needed):
                arrays = [np.load(f, allow_pickle=False) for f in needed]
                if not demos:
                    arrays += [np.zeros((0, *arrays[0].shape[1:]), np.float32), np.zeros(0, np.int64)]
                per_k[k] = PromptStates(arrays[0], arrays[1], [], arrays[2], arrays[3], [])
                continue
            if lm is None:
                lm = load_model(cfg.model, device=cfg.device)
                layers = cfg.layers or list(range(5, lm.n_layers + 1, 5))
                bad = [layer for layer in layers if not 0 <= layer <= lm.n_layers]
                if bad:
                    raise BitlensError(f"layer {bad[0]} out of range: the model has layers 0..{lm.n_layers}")
                write_manifest(out, command="entropy icl", config={**cfg.to_dict(), "layers": layers,
                                                                   "loss": llm_loss(cfg.target_fvu).to_dict()},
                               seeds={"seed": cfg.seed}, inputs={"model": lm.describe()})
            prompts = make_prompts(task, queries, pool, k, cfg.seed, cfg.fixed_demonstrations)
            label_ids = label_token_ids(lm.tokenizer, task.labels)
            log.info("%s: k=%d, %d prompts", name, k, len(prompts))
            marks = [label_prefix_ends(task, [pool[i] for i in p.demonstrations]) for p in prompts] if demos else None
            got = last_token_states(lm, [p.text for p in prompts], layers, label_ids, cfg.forward_batch,
                                    cfg.progress, marks=marks)
            if demos and len(got.marked) != k * len(prompts):
                log.warning("%s, k=%d: %d of %d demonstration label prefixes do not end on a token boundary "
                            "(left out)", name, k, k * len(prompts) - len(got.marked), k * len(prompts))
            write_json(folder / f"prompts_k{k}.json", {
                "k": k, "labels": task.labels, "label_token_ids": label_ids, "layers": layers,
                "last_tokens": sorted(set(got.last_tokens)),
                "demonstration_tokens": got.marked_tokens if demos else None,
                "prompts": [{"query": p.query, "label": p.label, "demonstrations": p.demonstrations, "text": p.text}
                            for p in prompts]})
            _save_npy(logits_file, got.logits)
            if demos:
                _save_npy(demo_files[0], got.marked)
                _save_npy(demo_files[1], got.marked_prompt)
            _save_npy(states_file, got.last)  # written last: its presence marks (task, k) as done
            per_k[k] = got
        layers = json.loads((folder / f"prompts_k{ks[0]}.json").read_text())["layers"]
        if any(per_k[k].last.shape[1] != len(layers) for k in ks):
            raise BitlensError(f"{folder}: saved states have other layers than {layers}; use a new output folder")
        truth = np.array([task.labels.index(q.label) for q in queries])
        accuracy = [{"k": k, "accuracy": float((per_k[k].logits.argmax(1) == truth).mean())} for k in ks]
        acc_by_k = {a["k"]: a["accuracy"] for a in accuracy}
        how = UnitTraining(steps=cfg.steps, batch_size=cfg.batch_size, expansion=cfg.expansion, seed=cfg.seed,
                           device=cfg.device, target_fvu=cfg.target_fvu)
        layer_rows, d = [], per_k[ks[0]].last.shape[-1]
        for li, layer in enumerate(tqdm(layers, desc=f"{name}: BAEs", unit="layer", disable=not cfg.progress)):
            if demos:
                train, val = query_split(per_k, ks, li, cfg.seed)
                unit = folder / f"bae_demonstrations_layer_{layer:02d}"
            else:
                pooled = torch.from_numpy(np.concatenate([per_k[k].last[:, li] for k in ks]))
                (train, val), unit = split_rows(pooled, 0.1, cfg.seed), folder / f"bae_layer_{layer:02d}"
            sets = {f"k_{k}": torch.from_numpy(np.ascontiguousarray(per_k[k].last[:, li])) for k in ks}
            result = fit_unit(unit, train, val, how, sets,
                              inputs={"task": name, "layer": layer, "ks": ks, "fit_on": cfg.fit_on})
            curve = [{"k": k, "entropy_bits": result[f"k_{k}"]["entropy_bits"],
                      "entropy_bits_corrected": result[f"k_{k}"]["entropy_bits_corrected"],
                      "entropy_bits_ci95": result[f"k_{k}"].get("entropy_bits_ci95"),  # None: a unit made before
                      "accuracy": acc_by_k[k]} for k in ks]
            layer_rows.append({"layer": layer, "curve": curve, "fvu": result["fvu"], "l0": result["l0"],
                               "target_fvu": result.get("target_fvu"), "dead": result.get("dead"),
                               "d_prime": cfg.expansion * d, "train_rows": result.get("train_rows"),
                               "val_rows": result.get("val_rows"), "fit_on": cfg.fit_on})
        tasks_out[name] = {"labels": task.labels, "source": task.source, "n_queries": len(queries),
                           "pool_size": len(pool), "input_prefix": task.input_prefix,
                           "label_prefix": task.label_prefix, "accuracy": accuracy, "layers": layer_rows}
    summary = {"model": cfg.model, "ks": ks, "tasks": tasks_out, "bae": "one per (task, layer), shared by all k",
               "fit_on": cfg.fit_on}
    write_json(out / "icl.json", summary)
    plot_icl(tasks_out, out / "icl.png")
    return summary
