"""Named MLP sites in the activation store: what is captured, old stores, transcoder input/target alignment."""

from __future__ import annotations

import json

import pytest
import torch

from bitlens.data.corpora import load_corpus
from bitlens.data.extract import capture_layers, extract_to_store
from bitlens.data.models import load_model
from bitlens.data.sources import PairedRows
from bitlens.data.store import ActivationStore
from bitlens.io import BitlensError
from data_fixtures import tiny_model_dir, write_corpus


@pytest.fixture(scope="module")
def lm():
    return load_model(tiny_model_dir())


@pytest.fixture(scope="module")
def site_store(lm, tmp_path_factory):
    corpus = load_corpus(write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=8))
    return ActivationStore(extract_to_store(lm, corpus, tmp_path_factory.mktemp("s") / "store", layers=[2],
                                            sites=["mlp_in.2", "mlp_out.2", "mlp_in.1"], dtype="float32",
                                            max_seq_len=24, forward_batch=4, shard_rows=100, progress=False))


def test_mlp_sites_are_the_mlp_input_and_output(lm):
    ids = torch.tensor([[1, 5, 9, 14, 20, 7]])
    got = capture_layers(lm, ids, torch.ones_like(ids), [2], ["mlp_in.2", "mlp_out.2"])
    block = lm.blocks[2]
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True)
        h = out.hidden_states[2]
        pos = torch.arange(ids.shape[1])[None]
        cos_sin = lm.model.model.rotary_emb(h, pos)
        attn, *_ = block.self_attn(block.input_layernorm(h), position_embeddings=cos_sin, attention_mask=None)
        mid = h + attn
        mlp_in = block.post_attention_layernorm(mid)
        mlp_out = block.mlp(mlp_in)
    torch.testing.assert_close(got[2], h)
    torch.testing.assert_close(got["mlp_in.2"], mlp_in, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["mlp_out.2"], mlp_out, atol=1e-4, rtol=1e-4)
    # the residual entering block 3 is mid + mlp_out
    torch.testing.assert_close(out.hidden_states[3], mid + mlp_out, atol=1e-4, rtol=1e-4)


def test_store_holds_sites_and_old_stores_read_without_them(site_store, tmp_path):
    assert site_store.layers == [2] and site_store.sites == ["mlp_in.2", "mlp_out.2", "mlp_in.1"]
    assert "mlp_out.2" in site_store.manifest["stats"]
    with pytest.raises(BitlensError, match="site mlp_out.3 is not in store"):
        site_store.split(0.2, 0, "mlp_out.3")
    # a manifest written before sites existed has no "sites" key
    import shutil
    old = tmp_path / "old"
    shutil.copytree(site_store.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["sites"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert ActivationStore(old).sites == []


def test_transcoder_pairs_line_up(lm, site_store):
    """Every (input, target) row pair served for training is (mlp_in.L, mlp(mlp_in.L)) of the same token."""
    train, _ = site_store.split(0.25, 0, "mlp_in.2")
    pairs = PairedRows(train, train.at("mlp_out.2"))
    mlp = lm.blocks[2].mlp
    seen = 0
    for x, y in pairs.batches(16, epoch=1, seed=3, start=1):
        with torch.no_grad():
            torch.testing.assert_close(mlp(x), y, atol=1e-4, rtol=1e-4)
        seen += len(x)
    assert seen == train.n_rows - 16
    torch.testing.assert_close(mlp(pairs.rows(50)), pairs.target_rows(50), atol=1e-4, rtol=1e-4)


def test_extract_cli_with_sites_only(tmp_path, capsys):
    from bitlens.cli.main import main

    corpus = write_corpus(tmp_path / "corpus", n_docs=2)
    out = tmp_path / "store"
    assert main(["extract", "--model", str(tiny_model_dir()), "--corpus", str(corpus), "--sites", "mlp_out.1",
                 "--out", str(out), "--max-seq-len", "24"]) == 0
    store = ActivationStore(out)
    assert store.layers == [] and store.sites == ["mlp_out.1"]
    assert "sites ['mlp_out.1']" in capsys.readouterr().out
    assert main(["extract", "--model", str(tiny_model_dir()), "--corpus", str(corpus), "--sites", "mlp_mid.1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "unknown site 'mlp_mid.1'" in capsys.readouterr().err
