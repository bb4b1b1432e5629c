"""Shared builders for the data-path tests: a tiny random Llama saved to disk and a small corpus.

Plain functions cached per process (not conftest fixtures), so the test modules stay independent.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

SENTENCES = [
    "The whale rose from the sea.", "Ishmael watched the grey water.", "Congress met in December.",
    "The president spoke about the budget.", "Mr. Smith asked a question.", "It was a cold and windy day!",
    "Why did the ship sail north?", "The harpoon flew across the deck.", "Trade grew in every state.",
    "Our nation is strong.", "The captain walked the deck at night.", "Taxes were lowered last year.",
]


def write_corpus(root: Path, n_docs: int = 6, sentences_per_doc: int = 8) -> Path:
    """A folder of ``n_docs`` text files, each a few paragraphs of the sentences above."""
    root.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        picked = [SENTENCES[(d * 5 + i * 7) % len(SENTENCES)] for i in range(sentences_per_doc)]
        half = len(picked) // 2
        (root / f"doc_{d:02d}.txt").write_text(" ".join(picked[:half]) + "\n\n" + " ".join(picked[half:]) + "\n")
    return root


@functools.lru_cache(maxsize=None)
def tiny_model_dir(bos: bool = True) -> Path:
    """A randomly initialised 4-block Llama (d=32) and a byte-level BPE tokenizer trained on SENTENCES,
    saved with save_pretrained; the tokenizer prepends <s> when ``bos``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(tempfile.mkdtemp(prefix="bitlens-tiny-llama-"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 3, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # random init is tiny; larger weights make layers differ visibly
        for p in model.parameters():
            p.mul_(5.0) if p.dim() > 1 else None
    model.save_pretrained(out)
    return out


def non_causal_model_dir() -> Path:
    """A folder holding only the config of an encoder model (DistilBERT)."""
    from transformers import DistilBertConfig

    out = Path(tempfile.mkdtemp(prefix="bitlens-distilbert-"))
    DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(out)
    json.loads((out / "config.json").read_text())  # sanity: it is a real config file
    return out


def tiny_store(root: Path, n_docs: int = 10) -> Path:
    """A one-layer (layer 2) activation store of the tiny model on a small written corpus, under ``root``."""
    from bitlens.data.corpora import load_corpus
    from bitlens.data.extract import extract_to_store
    from bitlens.data.models import load_model

    corpus = load_corpus(write_corpus(root / "corpus", n_docs=n_docs))
    return extract_to_store(load_model(tiny_model_dir()), corpus, root / "store", layers=[2], max_seq_len=24,
                            forward_batch=4, shard_rows=200, progress=False)
