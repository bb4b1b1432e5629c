"""Splicing: put a coder's reconstruction back into the language model and measure what the model loses.

Sites (see docs/data.md): ``resid.L`` is ``hidden_states[L]``, the residual stream *entering* block L (what a store
holds as layer L), replaced with a forward pre-hook on block L; ``mlp_in.L`` / ``mlp_out.L`` are block L's MLP
input and output (a transcoder reads the first and replaces the second, through hooks on the MLP).

A variant reads its input at one site and writes its output at another, at the selected positions:

* ``all``: every position the store would have kept (not padding, not special tokens, not position 0: the
  attention sink, which no coder was trained on); metrics at every replaced position that has a next token;
* ``last``: only the last token of each sequence, as the official splicing script does (its cached keys and
  values and all other positions stay clean); the sequence's final token is held back as the prediction target.

Against the clean run, per measured position (then averaged over positions, sums accumulated in float64):
KL(P_clean || P_spliced) and JSD (natural log, <= ln 2) of the next-token distributions, and cross-entropy of the
true next token. Summary: ``ce_increase`` = CE_spliced - CE_clean; ``ce_recovered`` = (CE_zero - CE_spliced) /
(CE_zero - CE_clean) with CE_zero the run with the written site zero-ablated (``ce_recovered_mean``: the same with
the site replaced by its dataset mean). A perfect reconstruction has KL 0, CE increase 0 and CE recovered 1.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import torch

from ..config import Serializable
from ..data.extract import TokenSequence, mlp_module, pad_batch
from ..data.models import LoadedModel
from ..io import BitlensError

Positions = Literal["all", "last"]
Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SpliceConfig(Serializable):
    """Settings of the splicing evaluation."""

    tokens: int = 4096
    """Budget of measured positions (next-token predictions) per variant."""
    max_seq_len: int = 128
    """Tokens per model input."""
    batch_size: int = 4
    """Sequences per forward pass (the next-token distributions of a batch are held in memory)."""
    positions: Positions = "all"
    """all (replace every kept position) or last (only the last token, as the official script)."""

    def __post_init__(self) -> None:
        if self.positions not in ("all", "last"):
            raise ValueError(f"positions must be all or last, not {self.positions!r}")
        if self.tokens < 1 or self.max_seq_len < 3 or self.batch_size < 1:
            raise ValueError("tokens and batch_size must be >= 1 and max_seq_len >= 3")


@dataclass
class Variant:
    """Read the input at site ``read``, replace site ``write`` by ``fn(input)`` [n, d_in] -> [n, d_out]."""

    read: str
    write: str
    fn: Fn


def parse_splice_site(site: str) -> tuple[str, int]:
    kind, _, layer = site.partition(".")
    if kind not in ("resid", "mlp_in", "mlp_out") or not layer.isdigit():
        raise BitlensError(f"unknown splice site {site!r}: use resid.L, mlp_in.L or mlp_out.L")
    return kind, int(layer)


def _register(lm: LoadedModel, site: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Hook ``fn(h)`` at ``site``; when it returns a tensor, that replaces the site's value."""
    kind, layer = parse_splice_site(site)
    if not 0 <= layer < lm.n_layers:
        raise BitlensError(f"site {site}: this model has blocks 0..{lm.n_layers - 1}")
    if kind in ("resid", "mlp_in"):
        module = lm.blocks[layer] if kind == "resid" else mlp_module(lm, layer)

        def pre(_m, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
            new = fn(kwargs[key])
            return None if new is None else (args, {**kwargs, key: new})
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(_m, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        new = fn(h)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return mlp_module(lm, layer).register_forward_hook(post)


class _Accumulator:
    def __init__(self):
        self.kl = self.jsd = self.ce = 0.0
        self.n = 0

    def add(self, logp_clean: torch.Tensor, logp: torch.Tensor, target: torch.Tensor) -> None:
        p = logp_clean.exp()
        q = logp.exp()
        self.kl += float((p * (logp_clean - logp)).sum(-1).double().sum())
        log_m = torch.log((p + q) / 2 + 1e-30)
        self.jsd += float((0.5 * (p * (logp_clean - log_m)).sum(-1) + 0.5 * (q * (logp - log_m)).sum(-1)).clamp_min(0)
                          .double().sum())
        self.ce += float(-logp.gather(-1, target[:, None]).double().sum())
        self.n += int(target.numel())

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"kl": self.kl / n, "jsd": self.jsd / n, "ce": self.ce / n, "n_positions": self.n}


def _masks(seqs: Sequence[TokenSequence], width: int, special_ids: set[int], positions: Positions
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(replace [B, T] bool, measure [B, T] bool, target [B, T] long): where to splice, where to read the
    next-token prediction, and the true next token there."""
    replace = torch.zeros(len(seqs), width, dtype=torch.bool)
    measure = torch.zeros_like(replace)
    target = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens = torch.tensor(s.tokens)
        n = len(s.tokens)
        ok = torch.tensor([sid >= 0 for sid in s.sentences]) & ~torch.isin(tokens, torch.tensor(sorted(special_ids)))
        ok[0] = False  # the attention sink, excluded from stores
        target[i, :n - 1] = tokens[1:]
        if positions == "all":
            replace[i, :n] = ok
            measure[i, :n - 1] = ok[:n - 1]
        else:
            replace[i, n - 1] = bool(ok[n - 1])
            measure[i, n - 1] = bool(ok[n - 1])
    return replace, measure, target


@torch.no_grad()
def splice_evaluate(lm: LoadedModel, sequences: Sequence[TokenSequence], variants: dict[str, Variant],
                    cfg: SpliceConfig, progress: bool = False) -> dict[str, dict[str, float]]:
    """KL, JSD and CE of each variant against the clean run (plus the clean CE under ``"clean"``).

    ``sequences`` are model inputs (e.g. from ``held_out_sequences``); for ``last`` each is cut so that its final
    token is the target. Returns ``{name: {"kl", "jsd", "ce", "n_positions"}}``.
    """
    if cfg.positions == "last":  # the final token is held back as the target of the last fed position
        sequences = [s for s in sequences if len(s.tokens) >= 3]
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    special = set(lm.tokenizer.all_special_ids)
    acc = {name: _Accumulator() for name in ["clean", *variants]}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(sequences), disable=not progress, desc="splice", unit="seq", dynamic_ncols=True)
    for first in range(0, len(sequences), cfg.batch_size):
        batch = list(sequences[first:first + cfg.batch_size])
        if cfg.positions == "last":
            fed = [TokenSequence(s.doc_pos, s.doc_index, s.chunk, s.tokens[:-1], s.sentences[:-1]) for s in batch]
        else:
            fed = batch
        ids, mask = pad_batch(fed, pad_id)
        replace, measure, target = _masks(fed, ids.shape[1], special, cfg.positions)
        if cfg.positions == "last":
            for i, s in enumerate(batch):
                target[i, len(s.tokens) - 2] = s.tokens[-1]
        if not measure.any():
            bar.update(len(batch))
            continue
        dev = lm.device
        ids, mask, replace_d = ids.to(dev), mask.to(dev), replace.to(dev)
        tgt = target[measure].to(dev)

        def run() -> torch.Tensor:
            logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            return torch.log_softmax(logits[measure.to(dev)].float(), dim=-1)

        clean = run()
        acc["clean"].add(clean, clean, tgt)
        for name, variant in variants.items():
            acc[name].add(clean, _spliced_run(lm, variant, replace_d, run), tgt)
        bar.update(len(batch))
    bar.close()
    return {name: a.result() for name, a in acc.items()}


@contextlib.contextmanager
def spliced(lm: LoadedModel, coder: torch.nn.Module, layer: int, positions: Positions = "all") -> Iterator[None]:
    """Within the block, the residual stream entering block ``layer`` (``hidden_states[layer]``) is replaced by
    ``coder``'s reconstruction: at every position, or at the last position of each input (``"last"``; pad on the
    left, or run unpadded, so the last position is a real token)."""
    if positions not in ("all", "last"):
        raise BitlensError(f"positions must be all or last, not {positions!r}")

    def replace(h: torch.Tensor) -> torch.Tensor:
        device = next(coder.parameters()).device
        if positions == "all":
            return coder(h.float().to(device)).reconstruction.to(h.device, h.dtype)
        new = h.clone()
        new[:, -1] = coder(h[:, -1].float().to(device)).reconstruction.to(h.device, h.dtype)
        return new

    handle = _register(lm, f"resid.{layer}", replace)
    try:
        yield
    finally:
        handle.remove()


def _spliced_run(lm: LoadedModel, variant: Variant, replace: torch.Tensor, run: Callable[[], torch.Tensor]):
    captured: dict[str, torch.Tensor] = {}

    def read(h: torch.Tensor) -> None:
        captured["x"] = h[replace]
        return None

    def write(h: torch.Tensor) -> torch.Tensor:
        if "x" not in captured:
            raise BitlensError(f"splice: site {variant.read} is not computed before {variant.write}")
        new = h.clone()
        new[replace] = variant.fn(captured["x"].float()).to(h.dtype)
        return new

    handles = [_register(lm, variant.read, read), _register(lm, variant.write, write)]
    try:
        return run()
    finally:
        for handle in handles:
            handle.remove()


def summarize(results: dict[str, dict[str, float]], name: str, zero: str, mean: str) -> dict[str, float]:
    """Splice metrics of variant ``name`` with CE increase and CE recovered against the ablation variants."""
    clean, r = results["clean"]["ce"], results[name]

    def recovered(ablated: float) -> float:
        gap = ablated - clean
        return (ablated - r["ce"]) / gap if abs(gap) > 1e-12 else float("nan")
    return {"kl": r["kl"], "jsd": r["jsd"], "ce": r["ce"], "ce_clean": clean, "ce_increase": r["ce"] - clean,
            "ce_recovered": recovered(results[zero]["ce"]), "ce_recovered_mean": recovered(results[mean]["ce"]),
            "n_positions": r["n_positions"]}


def ablations(write: str, mean: torch.Tensor) -> dict[str, Variant]:
    """Zero- and mean-ablation of site ``write`` (``mean`` [d]: the site's dataset mean)."""
    return {f"zero:{write}": Variant(write, write, lambda x: torch.zeros_like(x)),
            f"mean:{write}": Variant(write, write, lambda x: mean.to(x).expand_as(x))}


def held_out_sequences(lm: LoadedModel, documents: Sequence, max_seq_len: int, tokens: int,
                       positions: Positions = "all") -> list[TokenSequence]:
    """Model inputs from ``documents`` (corpus Documents), taken round-robin across documents (first chunk of
    each, then second chunks, ...) until about ``tokens`` positions would be measured."""
    from ..data.extract import document_sequences, special_prefix

    prefix = special_prefix(lm.tokenizer)
    per_doc = [document_sequences(lm.tokenizer, doc, max_seq_len, prefix) for doc in documents]
    out: list[TokenSequence] = []
    budget = 0
    for chunk in range(max((len(s) for s in per_doc), default=0)):
        for d, seqs in enumerate(per_doc):
            if chunk < len(seqs) and budget < tokens:
                toks, sents = seqs[chunk]
                if len(toks) < 3:
                    continue
                out.append(TokenSequence(d, d, chunk, toks, sents))
                budget += 1 if positions == "last" else max(0, len(toks) - 1 - len(prefix))
    if not out:
        raise BitlensError("no held-out text to splice on")
    return out
