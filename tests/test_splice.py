"""Splicing on a tiny real Llama: perfect reconstructions cost nothing, ablations cost something."""

from __future__ import annotations

import math

import pytest
import torch

from bitlens.analysis.splice import (SpliceConfig, Variant, ablations, held_out_sequences, splice_evaluate,
                                     summarize)
from bitlens.data.corpora import load_corpus
from bitlens.data.models import load_model
from data_fixtures import tiny_model_dir, write_corpus


@pytest.fixture(scope="module")
def lm():
    return load_model(tiny_model_dir())


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    return load_corpus(write_corpus(tmp_path_factory.mktemp("c"), n_docs=4)).documents


@pytest.mark.parametrize("positions", ["all", "last"])
def test_perfect_reconstruction_splices_for_free(lm, docs, positions):
    cfg = SpliceConfig(tokens=200, max_seq_len=16, batch_size=3, positions=positions)
    seqs = held_out_sequences(lm, docs, cfg.max_seq_len, cfg.tokens, positions)
    mean = torch.randn(lm.d_model)
    variants = {"identity": Variant("resid.2", "resid.2", lambda x: x.clone()),
                "noisy": Variant("resid.2", "resid.2", lambda x: x + 0.5 * x.std() * torch.randn_like(x)),
                **ablations("resid.2", mean)}
    results = splice_evaluate(lm, seqs, variants, cfg)
    perfect = summarize(results, "identity", "zero:resid.2", "mean:resid.2")
    assert perfect["kl"] == pytest.approx(0, abs=1e-6) and perfect["jsd"] == pytest.approx(0, abs=1e-6)
    assert perfect["ce_increase"] == pytest.approx(0, abs=1e-6)
    assert perfect["ce_recovered"] == pytest.approx(1, abs=1e-6)
    assert perfect["ce_recovered_mean"] == pytest.approx(1, abs=1e-6)
    zero = summarize(results, "zero:resid.2", "zero:resid.2", "mean:resid.2")
    assert zero["ce_recovered"] == 0 and zero["kl"] > 1e-3 and zero["jsd"] <= math.log(2)
    noisy = summarize(results, "noisy", "zero:resid.2", "mean:resid.2")
    assert noisy["kl"] > 0 and noisy["jsd"] > 0
    n = results["clean"]["n_positions"]
    assert (n == len(seqs)) if positions == "last" else n >= cfg.tokens


def test_clean_ce_is_the_models_own_loss(lm, docs):
    """The clean CE over all measured positions equals the HF loss on the same tokens (position 0 excluded)."""
    seqs = held_out_sequences(lm, docs[:1], 16, 10)[:1]
    res = splice_evaluate(lm, seqs, {}, SpliceConfig(tokens=10, max_seq_len=16, batch_size=1))
    ids = torch.tensor([seqs[0].tokens])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits, -1)
    first = 1  # the BOS is position 0 and is never replaced nor measured
    targets = ids[0, first + 1:]
    ce = float(-logp[first:-1].gather(-1, targets[:, None]).mean())
    assert res["clean"]["ce"] == pytest.approx(ce, rel=1e-5)


def test_transcoder_site_with_the_true_mlp_is_perfect(lm, docs):
    import copy

    mlp = copy.deepcopy(lm.blocks[1].mlp)  # a copy: calling the hooked module itself would re-enter the hooks
    cfg = SpliceConfig(tokens=100, max_seq_len=16, batch_size=2)
    seqs = held_out_sequences(lm, docs, cfg.max_seq_len, cfg.tokens)
    variants = {"mlp": Variant("mlp_in.1", "mlp_out.1", lambda x: mlp(x)), **ablations("mlp_out.1", torch.zeros(lm.d_model))}
    res = summarize(splice_evaluate(lm, seqs, variants, cfg), "mlp", "zero:mlp_out.1", "mean:mlp_out.1")
    assert res["kl"] == pytest.approx(0, abs=1e-5) and res["ce_recovered"] == pytest.approx(1, abs=1e-4)
