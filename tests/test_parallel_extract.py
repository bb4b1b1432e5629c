"""Extraction by several processes: per-process parts, resumable, merged into one store that reads as one."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from data_fixtures import tiny_model_dir, write_corpus
from bitlens.data.corpora import load_corpus
from bitlens.data.extract import ExtractConfig, extract_to_store
from bitlens.data.models import load_model
from bitlens.data.parallel_extract import Launch, merge_parts, part_dir
from bitlens.data.store import ActivationStore
from bitlens.io import BitlensError


@pytest.fixture(scope="module")
def lm_and_corpus(tmp_path_factory):
    root = write_corpus(tmp_path_factory.mktemp("corpus") / "docs", n_docs=9, sentences_per_doc=10)
    return load_model(str(tiny_model_dir())), load_corpus(str(root))


def _rows_by_token(store: ActivationStore, layer: int) -> dict[tuple, np.ndarray]:
    meta, rows = store.meta, store.view(layer).rows().numpy()
    return {tuple(m[:4]): r for m, r in zip(meta, rows)}


def test_two_processes_write_one_store_equal_to_one_process(lm_and_corpus, tmp_path):
    lm, corpus = lm_and_corpus
    cfg = ExtractConfig(out=str(tmp_path / "two"), layers=[2], shard_rows=64, progress=False, dtype="float32")
    # process 1 finishes first; process 0 then extracts its part, finds both complete and merges
    merge_parts(cfg, lm, corpus, [2], Launch(1, 2), time.perf_counter(), extract_to_store)
    assert (part_dir(tmp_path / "two", 1, 2) / "manifest.json").is_file() and not (tmp_path / "two" / "shards").exists()
    merge_parts(cfg, lm, corpus, [2], Launch(0, 2), time.perf_counter(), extract_to_store)
    two = ActivationStore(tmp_path / "two")
    assert not (tmp_path / "two" / "parts").exists() and two.manifest["settings"]["processes"] == 2
    one = ActivationStore(extract_to_store(lm, corpus, tmp_path / "one", layers=[2], shard_rows=64,
                                           dtype="float32", progress=False))
    assert two.n_tokens == one.n_tokens and len(two.manifest["shards"]) >= 2
    a, b = _rows_by_token(two, 2), _rows_by_token(one, 2)
    assert a.keys() == b.keys()
    assert all(np.allclose(a[k], b[k], atol=1e-5) for k in a)  # the same tokens (batching may round differently)
    assert np.allclose(two.stats(2)["mean"], one.stats(2)["mean"], atol=1e-5)
    # docs are dealt out: each part holds whole documents, none in both
    docs = [set(two.meta[lo:hi, 0]) for lo, hi in zip(two._offsets[:-1], two._offsets[1:])]
    parts = {}
    for shard, d in zip(two.manifest["shards"], docs):
        parts.setdefault(shard["part"], set()).update(d)
    assert len(parts) == 2 and parts["0-of-2"].isdisjoint(parts["1-of-2"])
    # rerun: complete, nothing redone; another number of processes is refused
    merge_parts(cfg, lm, corpus, [2], Launch(0, 2), time.perf_counter(), extract_to_store)
    with pytest.raises(BitlensError, match="by 2 process"):
        merge_parts(cfg, lm, corpus, [2], Launch(0, 3), time.perf_counter(), extract_to_store)


def test_an_interrupted_merge_resumes(lm_and_corpus, tmp_path):
    lm, corpus = lm_and_corpus
    cfg = ExtractConfig(out=str(tmp_path / "s"), layers=[2], shard_rows=64, progress=False, max_tokens=300)
    merge_parts(cfg, lm, corpus, [2], Launch(1, 2), time.perf_counter(), extract_to_store)
    # process 0's part, then a merge that stopped after moving the shards, before writing the manifest
    from bitlens.data import parallel_extract

    real = parallel_extract.StoreWriter

    class Crash(Exception):
        pass

    class Boom(real):
        def finish(self):
            raise Crash

    parallel_extract.StoreWriter = Boom
    try:
        with pytest.raises(Crash):
            merge_parts(cfg, lm, corpus, [2], Launch(0, 2), time.perf_counter(), extract_to_store)
    finally:
        parallel_extract.StoreWriter = real
    merge_parts(cfg, lm, corpus, [2], Launch(0, 2), time.perf_counter(), extract_to_store)
    store = ActivationStore(tmp_path / "s")
    assert store.n_tokens == 300 and store.manifest["settings"]["max_tokens"] == 300
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["complete"]
