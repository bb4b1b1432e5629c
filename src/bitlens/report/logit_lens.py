"""Logit lens of decoder directions: which next tokens a feature's decoder column promotes and suppresses.

Column j of the decoder (W_out[:, j]) is passed through the LM's final norm and its unembedding. Only the norm's
scale is applied (and, for a LayerNorm, its centring), never its bias: a bias adds the same logits to every
feature and would put the same tokens on top of every list. The ranking does not depend on the column's length.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..data.models import LoadedModel

log = logging.getLogger(__name__)

_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


def final_norm(lm: LoadedModel) -> torch.nn.Module | None:
    """The norm applied after the last block (``model.norm`` in Llama-likes, ``transformer.ln_f`` in GPT-2), or
    None when no module outside the blocks has a known name."""
    inside = {id(m) for m in lm.blocks.modules()}
    found = None
    for name, module in lm.model.named_modules():
        if name.rsplit(".", 1)[-1] in _NORM_NAMES and id(module) not in inside:
            found = module
    return found


@torch.no_grad()
def logit_lens(lm: LoadedModel, directions: torch.Tensor, token_texts: list[str], k: int = 10,
               block: int = 256) -> list[dict[str, Any]]:
    """For directions [n, d]: per direction the ``k`` most promoted and most suppressed tokens with their logit
    (centred over the vocabulary, so 0 is an average token)."""
    norm = final_norm(lm)
    if norm is None:
        log.warning("no final norm found in %s: logit lens without it", type(lm.model).__name__)
    head = lm.model.get_output_embeddings()
    if head is None:
        raise ValueError("the model has no output embedding")
    w_u = head.weight.float()
    gamma = getattr(norm, "weight", None) if norm is not None else None
    centre = isinstance(norm, torch.nn.LayerNorm)
    out = []
    for lo in range(0, len(directions), block):
        d = directions[lo:lo + block].float()
        if centre:
            d = d - d.mean(-1, keepdim=True)
        d = d / d.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)  # unit RMS, as the norm would make it
        if gamma is not None:
            d = d * gamma.float()
        logits = d @ w_u.T
        logits = logits - logits.mean(-1, keepdim=True)
        top = logits.topk(k, dim=-1)
        bottom = (-logits).topk(k, dim=-1)
        for i in range(len(d)):
            out.append({
                "promoted": [{"text": _text(token_texts, lm, int(t)), "logit": float(v)}
                             for v, t in zip(top.values[i], top.indices[i])],
                "suppressed": [{"text": _text(token_texts, lm, int(t)), "logit": -float(v)}
                               for v, t in zip(bottom.values[i], bottom.indices[i])],
            })
    return out


def _text(token_texts: list[str], lm: LoadedModel, token: int) -> str:
    if token < len(token_texts):
        return token_texts[token]
    return lm.tokenizer.decode([token])
