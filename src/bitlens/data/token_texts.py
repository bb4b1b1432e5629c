"""The decoded text of every token id, written once per store as ``tokens.json`` (token-level displays).

The table is exactly ``tokenizer.batch_decode([[i] for i in range(len(tokenizer))])``. Through that call it costs
about 0.4-0.8 CPU-s for SmolLM2's 49,152 ids (transformers converts the 49,152 one-id lists element by element and
decodes them one Python call at a time), a fixed cost of every extraction comparable to a tenth of a forward batch.
For the common case, a tokenizer backed by the Rust ``tokenizers`` library whose decoding transformers does not
post-process, the ids are decoded by the backend in one call instead (about 0.04 CPU-s), with the same result.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def token_texts(tokenizer) -> list[str]:
    """Decoded text of every token id (index = id), e.g. ' the' with its leading space."""
    ids = [[i] for i in range(len(tokenizer))]
    if backend_decodes_alone(tokenizer):
        texts = tokenizer.backend_tokenizer.decode_batch(ids, skip_special_tokens=False)
        if _spot_check(tokenizer, texts):
            return texts
        log.debug("token texts: the tokenizer backend disagrees with batch_decode; decoding id by id")
    return tokenizer.batch_decode(ids)


def backend_decodes_alone(tokenizer) -> bool:
    """True when transformers' decoding of ``tokenizer`` is the backend's ``decode`` and nothing else: a fast
    tokenizer whose class keeps transformers' own ``decode``/``batch_decode``/``_decode`` and which does not
    clean up tokenization spaces (the one step ``_decode`` adds after the backend)."""
    try:
        from transformers import PreTrainedTokenizerFast
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    except ImportError:  # a transformers without these names: take the generic route
        return False
    cls = type(tokenizer)
    return (isinstance(tokenizer, PreTrainedTokenizerFast)
            and cls._decode is PreTrainedTokenizerFast._decode
            and cls.decode is PreTrainedTokenizerFast.decode is PreTrainedTokenizerBase.decode
            and cls.batch_decode is PreTrainedTokenizerFast.batch_decode is PreTrainedTokenizerBase.batch_decode
            and getattr(tokenizer, "clean_up_tokenization_spaces", True) is False
            and hasattr(tokenizer, "backend_tokenizer"))


def _spot_check(tokenizer, texts: list[str], n: int = 64) -> bool:
    """The backend's texts equal ``batch_decode``'s at the special ids and ``n`` ids spread over the vocabulary
    (a guard against a transformers version whose ``_decode`` does more than the conditions above assume)."""
    size = len(texts)
    if size == 0:
        return True
    sample = sorted({*(i * (size - 1) // max(n - 1, 1) for i in range(n)),
                     *(i for i in tokenizer.all_special_ids if 0 <= i < size)})
    return tokenizer.batch_decode([[i] for i in sample]) == [texts[i] for i in sample]


__all__ = ["token_texts", "backend_decodes_alone"]
