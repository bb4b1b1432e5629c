"""Training straight from a model: the on-the-fly source (sharding, shuffling buffer, exact resume) and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from data_fixtures import tiny_model_dir, write_corpus
from bitlens.data.corpora import load_corpus
from bitlens.data.models import load_model
from bitlens.data.stream import ModelStream, model_rows, split_documents


@pytest.fixture(scope="module")
def lm_and_corpus(tmp_path_factory):
    root = write_corpus(tmp_path_factory.mktemp("corpus") / "docs", n_docs=10, sentences_per_doc=12)
    return load_model(str(tiny_model_dir())), load_corpus(str(root))


def _stream(lm_and_corpus, **kw):
    lm, corpus = lm_and_corpus
    train, _ = split_documents(len(corpus.documents), 0.2, 0)
    return ModelStream(lm, corpus, 2, train, **{"buffer_rows": 100, "seed": 3, **kw})


def _take(stream, n, b=16):
    it = stream.stream(b)
    out, states = [], []
    for _ in range(n):
        out.append(next(it))
        states.append(stream.stream_state())
    return out, states


def test_stream_serves_shuffled_batches_and_resumes_exactly(lm_and_corpus):
    first = _stream(lm_and_corpus, max_tokens=300)
    assert first.n_rows == 300 and first.dim == 32
    batches, states = _take(first, 40)  # several windows and more than one pass
    assert states[-1][0] >= 1, "the 40 batches should reach a second pass"
    assert all(b.shape == (16, 32) for b in batches)
    assert not torch.equal(batches[0], batches[len(batches) // 2])
    for cut in (5, 13, 27):
        again = _stream(lm_and_corpus, max_tokens=300)
        again.load_stream_state(states[cut - 1])
        rest, _ = _take(again, 40 - cut)
        for a, b in zip(rest, batches[cut:]):
            assert torch.equal(a, b)


def test_ranks_run_the_model_on_disjoint_documents(lm_and_corpus):
    one = _stream(lm_and_corpus)
    ranks = [_stream(lm_and_corpus, rank=r, world_size=2) for r in range(2)]
    docs = [{s.doc_index for s in r._plan(0)[0]} for r in ranks]
    assert docs[0].isdisjoint(docs[1]) and docs[0] | docs[1] == {s.doc_index for s in one._plan(0)[0]}
    assert sum(r.n_rows for r in ranks) == one.n_rows
    budget = _stream(lm_and_corpus, max_tokens=120, rank=1, world_size=2)
    assert budget.n_rows == 60


def test_validation_rows_come_from_held_out_documents(lm_and_corpus):
    lm, corpus = lm_and_corpus
    train, val = split_documents(len(corpus.documents), 0.2, 0)
    assert len(val) == 2 and set(train).isdisjoint(val)
    rows = model_rows(lm, corpus, 2, val, 50)
    assert 0 < rows.shape[0] <= 50 and rows.shape[1] == 32


def test_cli_trains_from_a_model_without_a_store(lm_and_corpus, tmp_path):
    from bitlens import load
    from bitlens.cli.main import main

    corpus = lm_and_corpus[1]
    out = tmp_path / "otf"
    args = ["train", "--model", str(tiny_model_dir()), "--corpus", corpus.name, "--layer", "2", "--max-tokens",
            "300", "--buffer-rows", "120", "--batch-size", "32", "--eval-every", "10", "--eval-tokens", "64",
            "--checkpoint-every", "10", "--no-progress", "--out", str(out)]
    assert main([*args, "--steps", "15"]) == 0
    files = {p.name for p in out.rglob("*")}
    assert "shards" not in files and "documents.jsonl" not in files  # no store was written
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert len(state["stream"]) == 1 and len(state["stream"][0]) == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["on_the_fly"]["layer"] == 2
    assert main([*args, "--steps", "25", "--resume"]) == 0
    assert load(out).d_in == 32
    assert json.loads((out / "final_metrics.json").read_text())["step"] == 25


def test_resume_of_a_streamed_run_needs_as_many_processes(lm_and_corpus, tmp_path):
    from bitlens.io import BitlensError
    from bitlens.training.config import TrainConfig
    from bitlens.training.distributed import World
    from bitlens.training.run import train_bae
    from bitlens.training.trainer import Trainer

    cfg = TrainConfig(steps=4, batch_size=16, eval_every=100, progress=False)
    train_bae(_stream(lm_and_corpus), None, tmp_path / "run", cfg=cfg)
    with pytest.raises(BitlensError, match="streams activations on 1 process.*resume it with 1 \\(not 2\\)"):
        Trainer.resume(tmp_path / "run", _stream(lm_and_corpus, rank=0, world_size=2), None, world=World(0, 2))
