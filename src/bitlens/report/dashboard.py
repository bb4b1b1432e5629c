"""`bitlens dashboard`: a static HTML feature browser for any coder (BAE, SAE baselines, transcoder, random control).

The site opens from the file system with no server and no network: ``index.html`` (one row per live feature,
sortable and filterable by a small vanilla-JS file) and ``features/f<j>.html`` per live feature. Pages are rendered
by Jinja2 with autoescaping on, so corpus text is always HTML-escaped; no corpus text goes into JavaScript.

Statistics cover every kept token of the store (training and held-out documents; attention-sink rows left out as
in training). See ``feature_data`` for what a page holds and how it is computed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Serializable
from ..interpretation.sampling import rng_for
from ..devices import resolve_device
from ..io import BitlensError, atomic_dir, file_fingerprint, write_json, write_manifest
from . import dashboard_pages as pages
from .feature_data import coder_pass, feature_bits, neighbours, summarise_feature

log = logging.getLogger(__name__)


@dataclass
class DashboardConfig(Serializable):
    """Settings of `bitlens dashboard`."""

    coder: str
    """Coder run folder (or its checkpoint/ folder): a BAE, an SAE baseline, a transcoder or the random control."""
    store: str
    """Activation store the coder reads (written by `bitlens extract`)."""
    out: str = "runs/dash"
    """Output folder: index.html, features/f<j>.html, assets/, dashboard.json, manifest.json (replaced as a whole;
    an existing folder that is not a dashboard is refused)."""
    interp: str = ""
    """Optional `bitlens interpret` run folder of this coder: adds explanations, scores and the judge's verdicts."""
    compare: str = ""
    """Optional `bitlens compare` folder: adds its table of coders (FVU, L0, CE recovered, ...) to the index."""
    layer: str = ""
    """Layer (e.g. 15) or site (e.g. mlp_in.15) the coder reads; default: the one named in the coder's run manifest,
    else the store's only layer."""
    examples: int = 16
    """Minority-state examples per feature: drawn at random for binary coders (every firing is equal); half top
    activations and half random for real-valued coders."""
    contrasts: int = 6
    """Same-token contrast examples per feature: its most common tokens where it is in its majority state."""
    neighbours: int = 8
    """Co-firing neighbours per feature (highest phi coefficient between the two minority states)."""
    logit_tokens: int = 10
    """Promoted and suppressed tokens per feature in the logit lens."""
    logit_lens: bool = True
    """Load the store's language model for the logit lens (--no-logit-lens skips it)."""
    context: int = 24
    """Tokens of context shown before each example's target token (a quarter as many after it)."""
    keep_outliers: bool = False
    """Keep attention-sink rows (norm above 10x the median), which training leaves out."""
    seed: int = 0
    """Seed of the example draws (per feature, so one feature's examples do not depend on the others)."""
    device: str = "cpu"
    """Device for encoding: cpu, cuda, cuda:N or auto."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if min(self.examples, self.contrasts, self.neighbours, self.logit_tokens, self.context) < 0:
            raise ValueError("examples, contrasts, neighbours, logit_tokens and context must be >= 0")


class DashboardResult(NamedTuple):
    index: Path
    """Path of index.html."""
    summary: dict[str, Any]
    """What dashboard.json holds: header statistics and one row per live feature."""


def _layer_key(cfg: DashboardConfig, store, run_inputs: dict[str, Any]):
    if cfg.layer:
        key = int(cfg.layer) if cfg.layer.lstrip("-").isdigit() else cfg.layer
        return store.default_layer(key)
    for name in ("read", "layer"):
        if run_inputs.get(name) is not None and run_inputs[name] in store.keys:
            return run_inputs[name]
    return store.default_layer(None)


def _run_inputs(checkpoint: Path) -> dict[str, Any]:
    for folder in (checkpoint, checkpoint.parent):
        manifest = folder / "manifest.json"
        if manifest.is_file():
            try:
                return json.loads(manifest.read_text()).get("inputs", {}) or {}
            except json.JSONDecodeError:
                return {}
    return {}


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "dashboard.json").exists())):
        raise BitlensError(f"{out} exists and is not a dashboard folder: choose another output folder")


def _load_lm(store, device: str):
    from ..data.models import load_model

    settings = store.manifest.get("settings", {}).get("model")
    if not settings:
        raise BitlensError(f"store {store.path} does not name its model: turn the logit lens off")
    try:
        lm = load_model(settings["name"], dtype="float32", device=device)
    except BitlensError as e:
        raise BitlensError(f"logit lens: {e} (turn the logit lens off to skip it)") from e
    if settings.get("fingerprint") and lm.fingerprint != settings["fingerprint"]:
        raise BitlensError(f"model {settings['name']!r} is not the one store {store.path} was extracted with "
                           "(fingerprint differs); turn the logit lens off")
    return lm


def _magnitudes(coder, rows: torch.Tensor, pairs_f: np.ndarray, pairs_r: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Activation of feature pairs_f[i] at view row pairs_r[i] (re-encoding only the rows needed)."""
    out = np.zeros(len(pairs_r), dtype=np.float32)
    if not len(pairs_r):
        return out
    uniq, idx = np.unique(pairs_r, return_inverse=True)
    device = next(coder.parameters()).device
    with torch.no_grad():
        for lo in range(0, len(uniq), chunk):
            code = coder.encode(rows[torch.from_numpy(uniq[lo:lo + chunk])].to(device).float()).cpu().numpy()
            sel = (idx >= lo) & (idx < lo + chunk)
            out[sel] = code[idx[sel] - lo, pairs_f[sel]]
    return out


def _interp(path: str, coder_sha: str) -> dict[int, dict[str, Any]]:
    """Per feature: the interpretation record plus its judged test items (with their contexts)."""
    folder = Path(path)
    if not (folder / "features.jsonl").is_file():
        raise BitlensError(f"{folder} is not a `bitlens interpret` output folder (no features.jsonl)")
    manifest = folder / "manifest.json"
    if manifest.is_file():
        made_for = json.loads(manifest.read_text()).get("inputs", {}).get("coder_sha256")
        if made_for and made_for != coder_sha:
            raise BitlensError(f"interpretation {folder} was made for another coder (weights differ)")

    def rows(name: str) -> list[dict[str, Any]]:
        file = folder / name
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.is_file() else []

    records = {int(r["feature"]): {**r, "verdicts": []} for r in rows("features.jsonl")}
    contexts = {(e["feature"], e["row"], e["sampler"]): e["context"] for e in rows("examples.jsonl")}
    for j in rows("judgements.jsonl"):
        if j.get("scorer") != "score" or int(j["feature"]) not in records:
            continue
        answer = j.get("answer")
        records[int(j["feature"])]["verdicts"].append({
            "context": contexts.get((j["feature"], j["row"], j["sampler"]), ""), "label": j["label"],
            "sampler": j["sampler"], "answer": answer,
            "correct": None if answer is None else bool(answer) == bool(j["label"])})
    return records


def _compare(path: str) -> list[dict[str, Any]]:
    file = Path(path) / "compare.json"
    if not file.is_file():
        raise BitlensError(f"{path} is not a `bitlens compare` output folder (no compare.json)")
    return json.loads(file.read_text()).get("coders", [])


def run_dashboard(cfg: DashboardConfig, echo: Callable[[str], None] = lambda line: log.info(line)) -> DashboardResult:
    """Build the site in ``cfg.out``; returns the index path and the summary."""
    from ..coders.registry import find_checkpoint, load
    from ..data.store import ActivationStore
    from ..interpretation.corpus import TokenTable

    started = time.perf_counter()
    out = Path(cfg.out)
    _check_out(out)
    checkpoint = find_checkpoint(cfg.coder)
    coder_sha = file_fingerprint(checkpoint / "model.safetensors")
    interp = _interp(cfg.interp, coder_sha) if cfg.interp else {}
    compare = _compare(cfg.compare) if cfg.compare else []
    store = ActivationStore(cfg.store)
    run_inputs = _run_inputs(checkpoint)
    key = _layer_key(cfg, store, run_inputs)
    coder = load(checkpoint, device=resolve_device(cfg.device))
    if getattr(coder, "d_in", store.dim) != store.dim:
        raise BitlensError(f"coder {cfg.coder} reads vectors of size {coder.d_in}, "
                           f"store {cfg.store} holds size {store.dim}")
    view, _ = store.split(0.0, cfg.seed, key, keep_outliers=cfg.keep_outliers)
    keep = np.ones(store.n_tokens, bool) if cfg.keep_outliers else ~store.outliers(key)
    store_rows = np.flatnonzero(keep)
    view_of = np.full(store.n_tokens, -1, dtype=np.int64)
    view_of[store_rows] = np.arange(len(store_rows))
    target = run_inputs.get("target")
    targets = view.at(target).rows() if target is not None and target != key and target in store.keys else None
    echo(f"encoding {view.n_rows} tokens of {key} with the {coder.architecture} coder (width {coder.width})")
    rows = view.rows()
    t0 = time.perf_counter()
    cp = coder_pass(coder, rows, targets)
    timings = {"encode": time.perf_counter() - t0}
    n = view.n_rows
    rate = cp.rate
    live = (rate > 0) & (rate < 1)
    live_ids = np.flatnonzero(live)
    off = rate > 0.5
    n_minority = np.rint(np.minimum(rate, 1 - rate) * n).astype(np.int64)
    table = TokenTable(store)
    texts = store.token_texts
    tokens = table.token[store_rows].astype(np.int64)
    n_t = np.bincount(tokens, minlength=len(texts))

    t0 = time.perf_counter()
    feats: dict[int, Any] = {}
    neigh: dict[int, list] = {}
    for byte in tqdm(np.unique(live_ids // 8), desc="features", disable=not cfg.progress, leave=False):
        bits = feature_bits(cp.packed, int(byte))
        for i in range(8):
            j = int(byte) * 8 + i
            if j >= len(rate) or not live[j]:
                continue
            state = bits[:, i] != off[j]
            top_rows = None
            if cp.top_rows is not None:
                ok = np.isfinite(cp.top_vals[:, j]) & (cp.top_vals[:, j] > 0)
                top_rows = cp.top_rows[ok, j]
            feats[j] = summarise_feature(j, state, float(rate[j]), tokens, n_t, texts, seed=cfg.seed,
                                         n_examples=cfg.examples, n_contrast=cfg.contrasts, top_rows=top_rows)
            if cfg.neighbours:
                neigh[j] = neighbours(j, np.flatnonzero(state), cp.packed, n_minority, off, live,
                                      rng_for(cfg.seed, j, "neighbours"), k=cfg.neighbours)
    timings["features"] = time.perf_counter() - t0

    magnitudes: dict[tuple[int, int], float] = {}
    if cp.top_rows is not None:  # real-valued coder: the activation of every shown example
        empty = [np.zeros(0, dtype=np.int64)]
        pf = np.concatenate([np.full(len(f.examples), j) for j, f in feats.items()] or empty).astype(np.int64)
        pr = np.concatenate([f.examples for f in feats.values()] or empty).astype(np.int64)
        vals = _magnitudes(coder, rows, pf, pr)
        magnitudes = {(int(f), int(r)): float(v) for f, r, v in zip(pf, pr, vals)}

    lens: dict[int, dict[str, Any]] = {}
    lens_note = "logit lens skipped (turned off)"
    t0 = time.perf_counter()
    if cfg.logit_lens and len(live_ids):
        from .logit_lens import logit_lens

        lm = _load_lm(store, cfg.device)
        w_out = coder.decoder.weight.detach()  # [d_out, width]
        if w_out.shape[0] != lm.d_model:
            lens_note = f"logit lens skipped: the decoder writes size {w_out.shape[0]}, the LM's width is {lm.d_model}"
        else:
            directions = w_out[:, torch.from_numpy(live_ids)].T.to(next(lm.model.parameters()).device)
            lens = dict(zip(live_ids.tolist(), logit_lens(lm, directions, texts, k=cfg.logit_tokens)))
            lens_note = f"decoder column through the final norm and unembedding of {lm.name}"
        del lm
    timings["logit_lens"] = time.perf_counter() - t0

    settings = store.manifest.get("settings", {})
    stats = {k: v for k, v in cp.stats.items() if k != "covariance"}  # not computed (cofiring=False)
    header = {**stats, "architecture": coder.architecture, "binary": bool(getattr(coder, "binary", False)),
              "coder": str(cfg.coder), "store": str(cfg.store), "layer": key, "n_live": int(len(live_ids)),
              "n_store_tokens": store.n_tokens, "outliers_left_out": int(store.n_tokens - n),
              "model": (settings.get("model") or {}).get("name"), "hist_kind": cp.hist_kind,
              "frequencies": rate.tolist()}
    t0 = time.perf_counter()
    ctx = pages.Context(table=table, store_rows=store_rows, view_of=view_of, packed=cp.packed, off=off,
                        left=cfg.context, right=max(1, cfg.context // 4))
    rows_out = []
    with atomic_dir(out) as tmp:
        site = pages.Site(tmp, binary=header["binary"])
        for j in tqdm(live_ids.tolist(), desc="pages", disable=not cfg.progress, leave=False):
            f = feats[j]
            page = pages.feature_page(ctx, f, neigh.get(j, []), lens.get(j), interp.get(j), cp.hist[j], cp.edges,
                                      cp.hist_kind, magnitudes, None if cp.mean_active is None else cp.mean_active[j])
            site.write_feature(j, page, prev=_neighbour_id(live_ids, j, -1), nxt=_neighbour_id(live_ids, j, 1),
                               header=header, lens_note=lens_note)
            rows_out.append(pages.index_row(f, interp.get(j), None if cp.mean_active is None else cp.mean_active[j],
                                            page))
        timings["pages"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - started
        header["seconds"] = timings
        site.write_index(header, rows_out, compare, _compare_name(cfg.coder, coder.architecture), bool(interp))
        summary = {"header": {k: v for k, v in header.items() if k != "frequencies"}, "features": rows_out}
        write_json(tmp / "dashboard.json", summary)
        write_manifest(tmp, command="dashboard", config=cfg.to_dict(), seeds={"seed": cfg.seed},
                       inputs={"coder": str(cfg.coder), "coder_sha256": coder_sha, "store": str(cfg.store),
                               "store_settings": settings, "layer": key, "interp": cfg.interp,
                               "compare": cfg.compare})
    echo(f"wrote {len(live_ids)} feature pages in {timings['total']:.0f}s")
    return DashboardResult(out / "index.html", summary)


def _neighbour_id(ids: np.ndarray, j: int, step: int) -> int | None:
    i = int(np.searchsorted(ids, j)) + step
    return int(ids[i]) if 0 <= i < len(ids) else None


def _compare_name(coder: str, architecture: str) -> str:
    parts = Path(coder).resolve().parts
    if "coders" in parts and parts.index("coders") + 1 < len(parts):
        return parts[parts.index("coders") + 1]
    return architecture


__all__ = ["DashboardConfig", "DashboardResult", "run_dashboard"]
