"""`bitlens demo` end to end on a tiny random Llama and a small corpus (the real loading and extraction path)."""

import json

import torch

from bitlens.analysis.features import frequent_features, top_tokens
from bitlens.data.text import show_token
from bitlens.cli.main import main
from data_fixtures import tiny_model_dir, write_corpus

KEYS = {"n_tokens", "layer", "fvu", "cosine", "entropy_bits", "l0", "dead", "constant_on", "dense", "top_features"}


def test_demo_pipeline(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", n_docs=12, sentences_per_doc=20)
    out = tmp_path / "demo"
    args = ["demo", "--model", str(tiny_model_dir()), "--corpus", str(corpus), "--max-tokens", "1500", "--layer", "2",
            "--steps", "30", "--top", "5", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert KEYS <= set(summary)
    assert summary["layer"] == 2 and summary["n_tokens"] == 1500
    for feat in summary["top_features"]:
        assert 0 < feat["firing_rate"] < 0.99 and feat["top_tokens"]
    printed = capsys.readouterr().out
    assert "FVU" in printed and "entropy" in printed
    # the demo ends with distinctive features (with examples) and the dashboard's path
    assert printed.rstrip().splitlines()[-1] == f"dashboard: {out / 'dashboard' / 'index.html'}"
    assert (out / "dashboard" / "index.html").is_file() and summary["distinctive_features"]
    assert "distinctive features" in printed and "⟦" in printed
    first = summary["distinctive_features"][0]
    assert first["why"] == "lexical F1" and first["lexical_f1"] == max(
        f["lexical_f1"] for f in json.loads((out / "dashboard" / "dashboard.json").read_text())["features"]
        if f["n_minority"] >= 20 and min(f["rate"], 1 - f["rate"]) <= 0.05)
    # rerunning resumes: the store is complete and the training run is already finished
    assert main(args) == 0


def test_feature_summaries():
    codes = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=torch.uint8)
    text = [" the", " cat", " the", "\n"]
    tops = {t["token"]: (t["count"], t["fraction_of_token"]) for t in top_tokens(codes, text, 0)}
    assert tops == {" the": (1, 0.5), " cat": (1, 1.0), "\n": (1, 1.0)}
    feats = frequent_features(codes, text, n=5)
    assert [f["feature"] for f in feats] == [0, 1]  # unit 2 is constant-on, left out
    assert feats[0]["firing_rate"] == 0.75
    assert show_token(" the\n") == "␣the↵"


def test_demo_refuses_a_run_trained_otherwise(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", n_docs=12, sentences_per_doc=20)
    base = ["demo", "--model", str(tiny_model_dir()), "--corpus", str(corpus), "--max-tokens", "800", "--layer", "1",
            "--steps", "10", "--top", "3", "--out", str(tmp_path / "d")]
    assert main(base) == 0
    assert main([*base, "--entropy-weight", "3"]) == 2
    assert "other settings" in capsys.readouterr().err
