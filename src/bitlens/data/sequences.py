"""Model inputs from documents, for extraction: whole sentences packed into sequences of at most ``max_seq_len``
tokens (after the tokenizer's special prefix), right-padded batches of them, and which tokens of a batch are stored,
with their metadata rows (``META_COLUMNS``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..io import BitlensError
from .corpora import Document
from .store_format import META_COLUMNS

@dataclass
class TokenSequence:
    """One model input: ``tokens`` (prefix specials included) with, per token, its sentence id
    (-1 for specials) and whether it may be stored. ``doc_pos``/``chunk`` locate it in the plan."""

    doc_pos: int  # position of the document in the extraction order
    doc_index: int  # index of the document in the corpus
    chunk: int  # index of this sequence within its document
    tokens: list[int]
    sentences: list[int]


def special_prefix(tokenizer) -> list[int]:
    """Token ids the tokenizer puts before the text by default (e.g. BOS); [] if none."""
    text = "The cat"
    full = tokenizer(text)["input_ids"]
    bare = tokenizer(text, add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return list(full[:i])
    return []


def document_sequences(tokenizer, doc: Document, max_seq_len: int, prefix: list[int]) -> list[tuple[list[int], list[int]]]:
    """Split one document into model inputs of at most ``max_seq_len`` tokens: whole sentences are packed
    greedily so contexts start at a sentence start; a sentence longer than a sequence is cut.
    Sentence i > 0 is tokenised with a leading space, as it appears in running text.
    Returns ``[(tokens, sentence_ids)]`` with the special prefix included (sentence id -1)."""
    room = max_seq_len - len(prefix)
    if room < 2:
        raise BitlensError(f"max sequence length {max_seq_len} is too short")
    texts = [s if i == 0 else " " + s for i, s in enumerate(doc.sentences)]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out: list[tuple[list[int], list[int]]] = []
    tokens: list[int] = []
    sents: list[int] = []
    for sid, ids in enumerate(encoded):
        if tokens and len(tokens) + len(ids) > room:
            out.append((prefix + tokens, [-1] * len(prefix) + sents))
            tokens, sents = [], []
        while len(ids) > room:  # an over-long sentence: cut it into full sequences
            out.append((prefix + ids[:room], [-1] * len(prefix) + [sid] * room))
            ids = ids[room:]
        tokens += ids
        sents += [sid] * len(ids)
    if tokens:
        out.append((prefix + tokens, [-1] * len(prefix) + sents))
    return out


def iter_sequences(tokenizer, documents: Sequence[Document], order: Sequence[int], max_seq_len: int,
                   start: tuple[int, int] = (0, 0)) -> Iterator[TokenSequence]:
    """All sequences of the documents in ``order`` (corpus indices), starting at ``start`` =
    (position in order, chunk). Documents before the start are not tokenised."""
    prefix = special_prefix(tokenizer)
    doc_pos0, chunk0 = start
    for doc_pos in range(doc_pos0, len(order)):
        doc_index = int(order[doc_pos])
        for chunk, (tokens, sents) in enumerate(document_sequences(tokenizer, documents[doc_index], max_seq_len, prefix)):
            if doc_pos == doc_pos0 and chunk < chunk0:
                continue
            yield TokenSequence(doc_pos, doc_index, chunk, tokens, sents)


def pad_batch(seqs: Sequence[TokenSequence], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ``input_ids`` and ``attention_mask``, both int64 ``[B, T]``."""
    width = max(len(s.tokens) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s.tokens)] = torch.tensor(s.tokens)
        mask[i, :len(s.tokens)] = 1
    return ids, mask


def keep_mask_and_meta(seqs: Sequence[TokenSequence], width: int, special_ids: set[int],
                       exclude_first: bool) -> tuple[torch.Tensor, np.ndarray, dict[str, int]]:
    """Which positions of the padded batch are stored (bool ``[B, T]``) and their metadata, int32
    ``[n, 5]`` with columns META_COLUMNS = (doc, chunk, sentence, position, token), in row-major order so
    it lines up with ``hidden[mask]``. Also counts of excluded tokens by reason."""
    keep = torch.zeros((len(seqs), width), dtype=torch.bool)
    rows: list[np.ndarray] = []
    counts = {"special": 0, "first": 0}
    for i, s in enumerate(seqs):
        tokens = np.asarray(s.tokens, dtype=np.int32)
        sents = np.asarray(s.sentences, dtype=np.int32)
        ok = (sents >= 0) & ~np.isin(tokens, list(special_ids))
        counts["special"] += int((~ok).sum())
        if exclude_first and ok[0]:
            ok[0] = False
            counts["first"] += 1
        pos = np.nonzero(ok)[0]
        keep[i, :len(tokens)] = torch.from_numpy(ok)
        rows.append(np.stack([np.full(len(pos), s.doc_index, np.int32), np.full(len(pos), s.chunk, np.int32),
                              sents[pos], pos.astype(np.int32), tokens[pos]], axis=1))
    return keep, np.concatenate(rows) if rows else np.zeros((0, len(META_COLUMNS)), np.int32), counts
