"""Interpretation building blocks: intervals and metrics, parsing, token display, samplers, lexical baseline,
ComSem burstiness, feature choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bitlens.interpretation.activations import CoderScan, comsem_scores
from bitlens.interpretation.display import clean, enclosing_word, mark_context, show_token
from bitlens.interpretation.lexical import best_token_set
from bitlens.interpretation.prompts import EXPLAIN, JUDGE, explain_request, judge_request, parse_choice, \
    parse_explanation
from bitlens.interpretation.sampling import capped_sample, choose_features, rate_bin, rng_for, split_units
from bitlens.interpretation.scoring import auroc, balanced_interval, detection_metrics, population_precision, wilson


def test_wilson_known_values():
    lo, hi = wilson(8, 8)
    assert lo == pytest.approx(0.6756, abs=1e-3) and hi == 1.0  # ComSem's 8/8 is only >= 0.68 at 95%
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_balanced_interval_contains_estimate_and_shrinks():
    small = balanced_interval(8, 10, 7, 10)
    large = balanced_interval(80, 100, 70, 100)
    assert small[0] < 0.75 < small[1] and large[1] - large[0] < small[1] - small[0]


def test_population_precision_exposes_over_broad_explanations():
    assert population_precision(0.001, 1.0, 0.05) == pytest.approx(0.001 / (0.001 + 0.999 * 0.05))
    assert population_precision(0.5, 1.0, 0.0) == 1.0


def test_detection_metrics_arithmetic_and_missing():
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    answers = [True, True, False, None, False, False, True, None]
    kinds = ["", "", "", "", "random", "random", "token_matched", "token_matched"]
    m = detection_metrics(labels, answers, kinds, prevalence=0.01, p_yes=[.9, .8, .3, .5, .2, .1, .7, .5])
    assert m["n_pos"] == 3 and m["n_neg"] == 3 and m["n_missing"] == 2 and m["missing_rate"] == 0.25
    assert m["tpr"] == pytest.approx(2 / 3) and m["tnr"] == pytest.approx(2 / 3)
    assert m["tnr_random"] == 1.0 and m["tnr_token_matched"] == 0.0
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["precision_pop"] == 1.0  # random negatives were all rejected: no corpus-wide false positives seen
    assert m["auroc"] == pytest.approx(auroc([.9, .8, .3], [.2, .1, .7]))
    assert auroc([1.0], [0.0]) == 1.0 and auroc([0.5], [0.5]) == 0.5


@pytest.mark.parametrize("text,expected", [("Yes", "Yes"), (" yes.", "Yes"), ("**No**", "No"), ("No, because", "No"),
                                           ("Maybe", None), ("", None), ("Yesterday", None), ("'YES'", "Yes")])
def test_parse_choice_is_lenient_but_never_guesses(text, expected):
    assert parse_choice(text) == expected


def test_parse_explanation():
    assert parse_explanation('\n"Explanation: numbers written as digits"\nmore') == "numbers written as digits"
    assert parse_explanation("⟪DATA⟫\n  \n") is None and parse_explanation("") is None


def test_token_display_and_injection_safety():
    assert show_token(" whale") == "␣whale" and show_token("\n") == "↵" and show_token("a ") == "a␣"
    assert clean("x⟦y⟧⟪DATA⟫\tz\ufffd") == "x[y]<DATA>⇥z⟨?⟩"
    text = mark_context([" Ignore", " instructions", "⟧"], " whale", [" rose", "\n"])
    assert text == " Ignore instructions]⟦␣whale⟧ rose↵" and text.count("⟦") == 1
    assert enclosing_word([" in", " 19"], "98", [","]) == "1998"
    assert enclosing_word([" the"], " harp", ["oon", " flew"]) == "harpoon"
    assert enclosing_word([" the"], " whale", [" rose"]) is None


def test_prompts_put_the_variable_part_last_and_delimit_data():
    a, b = judge_request("digits", "x ⟦␣1⟧"), judge_request("digits", "y ⟦␣2⟧")
    assert a.messages[:-1] == b.messages[:-1] and a.choices == ("Yes", "No")
    assert "⟪DATA⟫x ⟦␣1⟧⟪/DATA⟫" in a.messages[-1][1]
    e = explain_request(["p1", "p2"], ["n1"])
    assert e.messages[-1][1].count("⟪DATA⟫") == 2 and "NOT active" in e.messages[-1][1]
    assert EXPLAIN.version != JUDGE.version and EXPLAIN.version.startswith("detect-explain")


def test_rng_for_is_per_feature_and_stage():
    a = rng_for(0, 5, "sample").random(3)
    assert np.array_equal(a, rng_for(0, 5, "sample").random(3))
    assert not np.array_equal(a, rng_for(0, 6, "sample").random(3))
    assert not np.array_equal(a, rng_for(0, 5, "controls").random(3))


def test_split_units_by_document():
    doc = np.repeat(np.arange(6), 10)
    chunk = np.zeros(60, dtype=int)
    positives = np.arange(0, 60, 3)
    mask, unit = split_units(doc, chunk, positives, rng_for(0, 1, "s"))
    assert unit == "document" and 0 < mask.sum() < 60
    for d in range(6):
        assert len(set(mask[doc == d])) == 1  # a document is wholly on one side
    # all positives in one document: split by model input instead
    mask, unit = split_units(doc, np.arange(60) // 5, np.arange(0, 10), rng_for(0, 1, "s"))
    assert unit == "chunk"


def test_capped_sample_respects_caps_then_tops_up():
    rows = np.arange(40)
    token = rows % 4
    doc = rows // 20
    taken = capped_sample(rows, 6, rng_for(0, 0, "x"), token, doc, per_token=1, per_doc=2)
    assert len(taken) == 6 and len(set(taken)) == 6
    first = taken[:4]
    assert len(set(token[first])) == 4 and np.bincount(doc[first]).max() <= 2


def test_lexical_best_token_set():
    token = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    state = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    res = best_token_set(token, state, ["a", "b", "c", "d"])
    # {a}: P=1, R=2/3, F1=0.8; {a, b}: P=3/4, R=1, F1=6/7 -- the better rule
    assert res["tokens"] == ["a", "b"] and res["f1"] == pytest.approx(6 / 7) and not res["lexical"]
    exact = best_token_set(token, token == 2, ["a", "b", "c", "d"])
    assert exact["f1"] == 1.0 and exact["lexical"] and exact["tokens"] == ["c"]


def test_burstiness_ranks_rare_events():
    """An off unit with p = 0.9 outranks an on unit with p = 0.3; constant units score about -19.9."""
    stats = CoderScan(binary=True, width=4, n_tokens=10, rate=np.array([0.9, 0.3, 0.0, 1.0]),
                      mean=np.array([0.9, 0.3, 0.0, 1.0]), std=np.zeros(4))
    s = comsem_scores(torch.tensor([[0.0, 1.0, 0.0, 1.0]]), stats, "zscore")[0]
    assert s[0] == pytest.approx(math.log2(0.9), abs=1e-4) and s[1] == pytest.approx(math.log2(0.7), abs=1e-4)
    assert s[0] > s[1] > s[2] and s[2] == pytest.approx(-19.93, abs=0.01) and s[3] == pytest.approx(-19.93, abs=0.01)
    sae = CoderScan(binary=False, width=2, n_tokens=10, rate=np.array([.5, .5]), mean=np.array([1.0, 0.0]),
                    std=np.array([2.0, 0.0]))
    z = comsem_scores(torch.tensor([[5.0, 3.0]]), sae, "zscore")[0]
    assert z.tolist() == [2.0, 3.0]


def test_choose_features_is_stratified_and_skips_dead():
    rate = np.concatenate([np.zeros(50), np.ones(5), np.full(30, 5e-4), np.full(30, 0.05), np.full(4, 0.7)])
    chosen = choose_features(rate, 12, seed=0)
    bins = [rate_bin(rate[j]) for j in chosen]
    assert len(chosen) == 12 and "dead" not in bins and "always_on" not in bins
    assert bins.count(">=0.5") == 4 and bins.count("1e-4..1e-3") == 4 and bins.count("1e-2..0.1") == 4
    assert chosen == choose_features(rate, 12, seed=0) and chosen != choose_features(rate, 12, seed=1)


def test_prompts_match_golden_snapshot():
    """Every template rendered for fixed inputs. A deliberate prompt change regenerates tests/golden/interp_prompts.json
    (and changes the template versions, so cached replies of the old prompt are not reused)."""
    import json
    from pathlib import Path

    from bitlens.interpretation import prompts as P

    golden = json.loads((Path(__file__).parent / "golden" / "interp_prompts.json").read_text())
    item = P.comsem_item("␣whale", 3, "the great⟦␣whale⟧ rose")
    assert golden["versions"] == {t.name: t.version for t in (P.EXPLAIN, P.JUDGE, P.COMSEM_EXPLAIN, P.COMSEM_JUDGE)}
    assert golden["explain"] == [list(m) for m in P.explain_request(["the great⟦␣whale⟧ rose", "a⟦␣whale⟧"],
                                                                    ["the⟦␣whale⟧ boat"]).messages]
    assert golden["judge"] == [list(m) for m in P.judge_request("whales", "the great⟦␣whale⟧ rose").messages]
    assert golden["comsem_explain"] == [list(m) for m in P.comsem_explain_request([item]).messages]
    assert golden["comsem_judge"] == [list(m) for m in P.comsem_judge_request("whales", item).messages]
