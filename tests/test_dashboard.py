"""`bitlens dashboard`: pages for every live feature, escaping of corpus HTML, SAE magnitudes, logit lens,
interpretation and compare inputs, CLI errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from bitlens.cli.main import main
from bitlens.report.dashboard import DashboardConfig, run_dashboard
from dashboard_fixtures import LIVE, SCRIPT, make_bae, make_html_store, make_sae


@pytest.fixture(scope="module")
def html_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    return make_html_store(root / "store"), make_bae(root / "bae"), make_sae(root / "sae")


def _run(store, coder, out, **kw):
    return run_dashboard(DashboardConfig(coder=str(coder), store=str(store), out=str(out), logit_lens=False,
                                         progress=False, **kw), echo=lambda s: None)


def _all_html(out):
    return {p.name: p.read_text() for p in [out / "index.html", *sorted((out / "features").glob("*.html"))]}


def test_binary_coder_pages_and_escaping(html_store, tmp_path):
    store, bae, _ = html_store
    out = tmp_path / "dash"
    result = _run(store, bae, out)
    assert result.index == out / "index.html"
    header = result.summary["header"]
    assert header["n_live"] == len(LIVE) and header["dead"] == 1 and header["constant_on"] == 1
    assert header["fvu"] < 0.3  # identity decoder: only the 0.25 bias error on real-valued column 7
    index = (out / "index.html").read_text()
    assert len(re.findall(r'<tr data-pol="(on|off)">', index)) == len(LIVE)
    assert sorted(int(p.stem[1:]) for p in (out / "features").glob("f*.html")) == LIVE
    rows = {r["feature"]: r for r in result.summary["features"]}
    assert rows[0]["lexical_f1"] == 1.0 and rows[0]["lexical_tokens"] == [SCRIPT] and rows[0]["concentration"] == 1.0
    assert rows[2]["polarity"] == "off" and rows[2]["lexical_tokens"] == [" the"]
    assert rows[6]["lexical_f1"] == 1.0
    # corpus HTML is text everywhere: never raw, always escaped; the only script is the dashboard's own
    pages = _all_html(out)
    for name, html in pages.items():
        assert "alert('pwned')" not in html and "<b>bold" not in html and "doc<" not in html, name
        assert len(re.findall(r"<script", html)) == (1 if name == "index.html" else 0), name
    f0 = pages["f0.html"]
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in f0
    assert f0.count('<mark class="target">') == 16  # --examples default
    assert "Same token, majority state" in f0 and "None: the feature is in its minority state" in f0
    # feature 1 (" whale") never fires elsewhere; feature 5 (random) has same-token contrasts
    f5 = pages["f5.html"]
    assert len(re.findall(r"<li>", f5.split('id="contrast"')[1].split("</section>")[0])) == 6
    assert "Pre-step margin histogram" in f5 and "<svg" in f5
    # the OFF feature shows its OFF state: the target of every example is " the"
    f2 = pages["f2.html"]
    shown = f2.split('id="examples"')[1].split("</ol>")[0]
    assert set(re.findall(r'<mark class="target">(.*?)</mark>', shown)) == {"␣the"}


def test_neighbours_and_examples_are_seeded_per_feature(html_store, tmp_path):
    store, bae, _ = html_store
    a = _run(store, bae, tmp_path / "a").summary["features"]
    b = _run(store, bae, tmp_path / "b", neighbours=0).summary["features"]
    assert [r["examples"] for r in a] == [r["examples"] for r in b]
    assert (tmp_path / "a" / "features" / "f0.html").read_text().count("Co-firing neighbours") == 1


def test_sae_pages_show_magnitudes(html_store, tmp_path):
    store, _, sae = html_store
    out = tmp_path / "sae"
    result = _run(store, sae, out)
    header = result.summary["header"]
    assert header["architecture"] == "relu_sae" and not header["binary"] and header["hist_kind"] == "activation"
    rows = {r["feature"]: r for r in result.summary["features"]}
    assert rows[7]["mean_active"] == pytest.approx(rows[7]["mean_active"]) and 0.25 < rows[7]["mean_active"] < 1.75
    page = (out / "features" / "f7.html").read_text()
    values = [float(v) for v in re.findall(r'<b class="act">([0-9.e+-]+)</b>', page)]
    assert len(values) == 16 and all(0.25 <= v <= 1.75 for v in values)
    assert values[:8] == sorted(values[:8], reverse=True) and values[0] == pytest.approx(max(values), rel=1e-3)
    assert "Top activations first" in page and "Activation histogram" in page
    assert "mean act" in (out / "index.html").read_text()


def test_logit_lens_matches_final_norm_and_unembedding(tmp_path):
    from bitlens.coders.bae import BAEConfig, BinaryAutoencoder
    from bitlens.coders.registry import save_coder
    from bitlens.data.corpora import load_corpus
    from bitlens.data.extract import extract_to_store
    from bitlens.data.models import load_model
    from data_fixtures import tiny_model_dir, write_corpus

    lm = load_model(str(tiny_model_dir()))
    corpus = load_corpus(str(write_corpus(tmp_path / "corpus", n_docs=6, sentences_per_doc=10)))
    store = extract_to_store(lm, corpus, tmp_path / "store", layers=[2], max_tokens=600, progress=False)
    torch.manual_seed(0)
    model = BinaryAutoencoder(BAEConfig(d_in=lm.d_model, d_code=16))
    save_coder(model, tmp_path / "bae")
    out = tmp_path / "dash"
    assert main(["dashboard", "--coder", str(tmp_path / "bae"), "--store", str(store), "--out", str(out),
                 "--no-progress"]) == 0
    live = json.loads((out / "dashboard.json").read_text())["features"]
    j = live[0]["feature"]
    direction = model.decoder.weight[:, j].detach()
    normed = lm.model.model.norm.weight * direction / direction.pow(2).mean().sqrt()
    logits = lm.model.lm_head.weight @ normed
    texts = json.loads((store / "tokens.json").read_text())
    best = texts[int(logits.argmax())]
    from bitlens.interpretation.display import show_token
    from markupsafe import escape

    page = (out / "features" / f"f{j}.html").read_text()
    promoted = page.split("Logit lens: promoted")[1].split("</table>")[0]
    first = re.search(r"<code>(.*?)</code>", promoted).group(1)
    assert first == str(escape(show_token(best)))


def test_interpretation_and_compare_inputs(html_store, tmp_path):
    from bitlens.interpretation.config import InterpretConfig
    from bitlens.interpretation.pipeline import run_interpret
    from interp_fixtures import ScriptedLLM, make_planted_coder, make_planted_store

    store, coder = make_planted_store(tmp_path / "pstore"), make_planted_coder(tmp_path / "pcoder")
    run_interpret(InterpretConfig(coder=str(coder), store=str(store), out=str(tmp_path / "interp"), n_features=8,
                                  progress=False, control_fraction=1.0, n_test_positives=10, n_test_negatives=10),
                  backend=ScriptedLLM("perfect"), echo=lambda s: None)
    compare = tmp_path / "cmp"
    compare.mkdir()
    (compare / "compare.json").write_text(json.dumps({"coders": [
        {"name": "bae", "fvu": 0.2, "l0": 3.0, "dead_frac": 0.25, "dense_frac": 0.1, "entropy_bits": 2.0,
         "kl": 0.1, "ce_recovered": 0.9},
        {"name": "relu_sae", "fvu": 0.3, "l0": 5.0, "dead_frac": 0.0, "dense_frac": 0.0, "entropy_bits": 3.0,
         "kl": float("nan"), "ce_recovered": float("nan")}]}))
    out = tmp_path / "dash"
    result = _run(store, coder, out, interp=str(tmp_path / "interp"), compare=str(compare))
    rows = {r["feature"]: r for r in result.summary["features"]}
    assert rows[0]["explanation"] == "digits" and rows[0]["score"] == 1.0
    index = (out / "index.html").read_text()
    assert "<th data-key=\"expl\"" in index and "digits" in index and '<tr class="self"><td>bae</td>' in index
    page = (out / "features" / "f0.html").read_text()
    assert "balanced accuracy 1.00" in page and page.count('<tr class="right">') == 20
    assert "Shuffled-explanation control" in page
    # an interpretation of another coder is refused
    assert main(["dashboard", "--coder", str(html_store[1]), "--store", str(html_store[0]), "--out",
                 str(tmp_path / "x"), "--interp", str(tmp_path / "interp"), "--no-logit-lens"]) == 2


def test_cli_errors(html_store, tmp_path, capsys):
    store, bae, _ = html_store
    assert main(["dashboard", "--store", str(store)]) == 2
    assert "required: --coder" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "precious.txt").write_text("keep me")
    assert main(["dashboard", "--coder", str(bae), "--store", str(store), "--out", str(busy), "--no-logit-lens"]) == 2
    assert "not a dashboard folder" in capsys.readouterr().err and (busy / "precious.txt").exists()
    assert main(["dashboard", "--coder", str(bae), "--store", str(store), "--out", str(tmp_path / "d"),
                 "--no-logit-lens", "--no-progress"]) == 0
    assert "dashboard: " in capsys.readouterr().out
    # rebuilding into an existing dashboard replaces it
    assert main(["dashboard", "--coder", str(bae), "--store", str(store), "--out", str(tmp_path / "d"),
                 "--no-logit-lens", "--no-progress", "--examples", "3"]) == 0
    assert (tmp_path / "d" / "features" / "f0.html").read_text().count('<mark class="target">') == 3
    # a store without the model: the logit lens needs it and says how to skip it
    assert main(["dashboard", "--coder", str(bae), "--store", str(store), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 2
    assert "logit lens off" in capsys.readouterr().err
    assert np.isfinite(json.loads((tmp_path / "d" / "dashboard.json").read_text())["header"]["fvu"])
