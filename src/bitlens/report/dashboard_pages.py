"""Page data and rendering for the dashboard: Jinja2 with autoescaping, inline SVG histograms, token contexts.

Corpus text reaches the templates only as plain strings (escaped by Jinja2); the SVG markup built here holds
numbers only."""

from __future__ import annotations

import math
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from ..interpretation.display import clean, show_token
from .feature_data import FeatureSummary, bit


@dataclass
class Context:
    table: Any  # interpretation.corpus.TokenTable
    store_rows: np.ndarray  # view row -> store row
    view_of: np.ndarray  # store row -> view row (-1: left out)
    packed: np.ndarray
    off: np.ndarray
    left: int
    right: int


def segments(ctx: Context, feature: int, view_row: int) -> list[tuple[str, str]]:
    """The example's context as (class, text) runs: "t" the target token (whitespace shown), "m" another token in
    the feature's minority state, "" plain text (newlines and tabs shown)."""
    t = ctx.table
    r = int(ctx.store_rows[view_row])
    lo, hi = max(int(t.seq_start[r]), r - ctx.left), min(int(t.seq_end[r]), r + 1 + ctx.right)
    span = np.arange(lo, hi)
    vpos = ctx.view_of[span]
    marked = np.zeros(len(span), dtype=bool)
    ok = vpos >= 0
    marked[ok] = bit(ctx.packed, vpos[ok], feature) != ctx.off[feature]
    out: list[tuple[str, str]] = []
    plain = ""
    for row, m in zip(span.tolist(), marked.tolist()):
        text = t.text(row)
        if row == r or m:
            if plain:
                out.append(("", clean(plain)))
                plain = ""
            out.append(("t", show_token(text)) if row == r else ("m", clean(text)))
        else:
            plain += text
    if plain:
        out.append(("", clean(plain)))
    return out


def _example(ctx: Context, f: FeatureSummary, row: int, kind: str, magnitudes: dict) -> dict[str, Any]:
    t = ctx.table
    r = int(ctx.store_rows[row])
    return {"segments": segments(ctx, f.feature, row), "document": t.document_id(r), "position": int(t.position[r]),
            "kind": kind, "value": magnitudes.get((f.feature, int(row)))}


def histogram_svg(counts: np.ndarray, edges: np.ndarray, kind: str, width: int = 420, height: int = 90) -> Markup:
    """Bars on a log10(1 + count) scale; the margin histogram shades bins above 0 (firing)."""
    counts = np.asarray(counts, dtype=np.float64)
    if kind == "activation":
        nz = np.flatnonzero(counts)
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, len(counts))
        counts, edges = counts[lo:hi], edges[lo:hi + 1]
    h = np.log10(1 + counts)
    top = h.max() or 1.0
    bw = width / max(len(counts), 1)
    bars = []
    for i, (c, v) in enumerate(zip(counts, h)):
        bh = (height - 14) * v / top
        fires = kind == "activation" or edges[i] >= 0
        bars.append(f'<rect x="{i * bw:.1f}" y="{height - 14 - bh:.1f}" width="{max(bw - 1, 1):.1f}" height="{bh:.1f}" '
                    f'class="{"bon" if fires else "boff"}"><title>{edges[i]:.3g} to {edges[i + 1]:.3g}: '
                    f'{int(c)}</title></rect>')
    label = (f'<text x="0" y="{height - 2}">{edges[0]:.3g}</text>'
             f'<text x="{width}" y="{height - 2}" text-anchor="end">{edges[-1]:.3g}</text>')
    if kind == "margin" and edges[0] < 0 < edges[-1]:
        x0 = width * (0 - edges[0]) / (edges[-1] - edges[0])
        label += (f'<line x1="{x0:.1f}" x2="{x0:.1f}" y1="0" y2="{height - 14}" class="zero"/>'
                  f'<text x="{x0:.1f}" y="{height - 2}" text-anchor="middle">0</text>')
    return Markup(f'<svg class="hist" viewBox="-14 0 {width + 28} {height}" width="{width + 28}" height="{height}" '
                  f'role="img">{"".join(bars)}{label}</svg>')


def frequency_svg(rate: np.ndarray, width: int = 520, height: int = 110) -> Markup:
    """Histogram of log10 firing rates of the live features (dead and constant-on counted in the header)."""
    live = rate[(rate > 0) & (rate < 1)]
    lo = math.floor(min(np.log10(live).min(), -4)) if len(live) else -6
    edges = np.linspace(lo, 0, 4 * (-lo) + 1)
    counts = np.histogram(np.log10(live), bins=edges)[0] if len(live) else np.zeros(len(edges) - 1)
    top = counts.max() or 1
    bw = width / len(counts)
    bars = "".join(f'<rect x="{i * bw:.1f}" y="{height - 16 - (height - 20) * c / top:.1f}" width="{bw - 1:.1f}" '
                   f'height="{(height - 20) * c / top:.1f}" class="bon">'
                   f'<title>10^{edges[i]:.2f} to 10^{edges[i + 1]:.2f}: '
                   f'{int(c)} features</title></rect>' for i, c in enumerate(counts))
    ticks = "".join(f'<text x="{width * (e - lo) / -lo:.1f}" y="{height - 2}" text-anchor="middle">1e{e}</text>'
                    for e in range(lo, 1))
    return Markup(f'<svg class="hist" viewBox="-14 -2 {width + 28} {height + 2}" width="{width + 28}" '
                  f'height="{height + 2}" role="img">{bars}{ticks}</svg>')


def feature_page(ctx: Context, f: FeatureSummary, neigh: list, lens: dict | None, interp: dict | None,
                 hist: np.ndarray, edges: np.ndarray, hist_kind: str, magnitudes: dict,
                 mean_active: float | None) -> dict[str, Any]:
    return {
        "f": f, "mean_active": mean_active,
        "examples": [_example(ctx, f, int(r), k, magnitudes) for r, k in zip(f.examples, f.example_kind)],
        "contrast": [_example(ctx, f, int(r), "contrast", magnitudes) for r in f.contrast],
        "top_tokens": [{**t, "shown": show_token(t["text"])} for t in f.top_tokens],
        "lexical_tokens": [show_token(t) for t in f.lexical["tokens"]],
        "neighbours": neigh, "lens": _shown_lens(lens), "interp": interp,
        "hist": histogram_svg(hist, edges, hist_kind), "hist_kind": hist_kind,
    }


def _shown_lens(lens: dict | None) -> dict | None:
    if lens is None:
        return None
    return {side: [{**t, "shown": show_token(t["text"])} for t in lens[side]] for side in ("promoted", "suppressed")}


def _score(interp: dict | None) -> tuple[float | None, str]:
    """Headline score of an interpretation record and its name."""
    score = (interp or {}).get("score") or {}
    if "balanced_accuracy" in score:
        return score["balanced_accuracy"], "balanced accuracy"
    if "score" in score:
        return score["score"], "ComSem fraction yes"
    return None, ""


def index_row(f: FeatureSummary, interp: dict | None, mean_active: float | None, page: dict) -> dict[str, Any]:
    score, score_name = _score(interp)
    return {"feature": f.feature, "rate": f.rate, "entropy_bits": f.entropy_bits, "polarity": f.polarity,
            "n_minority": f.n_minority, "lexical_f1": f.lexical["f1"], "lexical_precision": f.lexical["precision"],
            "lexical_recall": f.lexical["recall"], "lexical_tokens": f.lexical["tokens"],
            "top_tokens": [{"text": t["text"], "count": t["count"], "fraction": t["fraction"]}
                           for t in f.top_tokens[:5]],
            "concentration": f.concentration, "mean_active": None if mean_active is None else float(mean_active),
            "explanation": (interp or {}).get("explanation"), "score": score, "score_name": score_name,
            "examples": ["".join(f"⟦{s}⟧" if c == "t" else s for c, s in ex["segments"])
                         for ex in page["examples"][:3]]}


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def copy_assets(target: Path) -> None:
    """Copy the CSS and JS files the pages link to."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("dashboard.css", "dashboard.js"):
        data = (resources.files("bitlens.report") / "templates" / name).read_bytes()
        (target / name).write_bytes(data)


class Site:
    """Writes the pages of one dashboard into ``root``."""

    def __init__(self, root: Path, binary: bool):
        import jinja2

        self.root = root
        self.binary = binary
        self.env = jinja2.Environment(loader=jinja2.PackageLoader("bitlens.report", "templates"), autoescape=True,
                                      trim_blocks=True, lstrip_blocks=True)
        self.env.filters["fmt"] = _fmt
        self.env.filters["tok"] = show_token
        self._feature = self.env.get_template("feature.html.j2")
        (root / "features").mkdir(parents=True, exist_ok=True)
        copy_assets(root / "assets")

    def write_feature(self, j: int, page: dict[str, Any], *, prev: int | None, nxt: int | None,
                      header: dict[str, Any], lens_note: str) -> None:
        html = self._feature.render(page=page, prev=prev, next=nxt, h=header, binary=self.binary,
                                    lens_note=lens_note, root="../")
        (self.root / "features" / f"f{j}.html").write_text(html, encoding="utf-8")

    def write_index(self, header: dict[str, Any], rows: list[dict[str, Any]], compare: list[dict[str, Any]],
                    compare_name: str, has_interp: bool) -> None:
        html = self.env.get_template("index.html.j2").render(
            h=header, rows=rows, compare=compare, compare_name=compare_name, has_interp=has_interp,
            binary=self.binary, freq=frequency_svg(np.asarray(header["frequencies"])), root="")
        (self.root / "index.html").write_text(html, encoding="utf-8")
