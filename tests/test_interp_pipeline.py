"""End to end on the planted-feature corpus with scripted LLMs: statuses, metric arithmetic, controls, resume,
warm cache, ComSem bookkeeping."""

from __future__ import annotations

import json

import pytest

from bitlens.interpretation.config import InterpretConfig
from bitlens.interpretation.pipeline import run_interpret
from interp_fixtures import ScriptedLLM, make_planted_coder, make_planted_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    return make_planted_store(root / "store"), make_planted_coder(root / "coder")


def _cfg(planted, out, **kw) -> InterpretConfig:
    store, coder = planted
    base = dict(coder=str(coder), store=str(store), out=str(out), n_features=8, progress=False, control_fraction=1.0,
                n_test_positives=20, n_test_negatives=20)
    return InterpretConfig(**{**base, **kw})


def _features(out) -> dict[int, dict]:
    return {r["feature"]: r for r in map(json.loads, open(out / "features.jsonl"))}


def test_perfect_judge_recovers_planted_features(planted, tmp_path):
    llm = ScriptedLLM("perfect")
    summary = run_interpret(_cfg(planted, tmp_path / "run"), backend=llm, echo=lambda s: None)
    feats = _features(tmp_path / "run")
    assert sorted(feats) == [0, 1, 2, 5]  # dead (3, 7), always-on (4) and too rare (6) are never chosen
    assert summary["coder"] == {**summary["coder"], "dead": 2, "always_on": 1, "too_rare": 1, "width": 8}
    for f, explanation in [(0, "digits"), (1, "bank in a money sense"), (2, "the word the")]:
        s = feats[f]["score"]
        assert feats[f]["status"] == "ok" and feats[f]["explanation"] == explanation
        assert s["tpr"] == s["tnr"] == s["balanced_accuracy"] == 1.0 and s["precision_pop"] == 1.0
        assert s["balanced_accuracy_ci"][0] > 0.85 and s["n_missing"] == 0
        assert s["n_neg_token_matched"] > 0 if f == 1 else True  # " the" and digits never occur in the majority state
    assert feats[2]["polarity"] == "off" and feats[0]["polarity"] == "on"
    assert feats[0]["lexical"]["lexical"] and feats[2]["lexical"]["lexical"]
    assert not feats[1]["lexical"]["lexical"] and feats[1]["lexical"]["tokens"] == [" bank"]
    assert feats[5]["explanation"] == "unknown" and not feats[5]["lexical"]["lexical"]
    assert summary["n_interpretable"]["0.8"] == 3 and summary["n_scored"] == 4
    # shuffled-explanation controls score far below the real explanations
    ctrl = summary["controls"]["shuffled_explanation"]
    assert ctrl["n"] == 4 and ctrl["mean_score"] < 0.75 < ctrl["mean_score_real_explanation"]
    # examples: explain and test sides come from different documents
    examples = [json.loads(line) for line in open(tmp_path / "run" / "examples.jsonl")]
    for f in (0, 1, 2):
        docs = {side: {e["document"] for e in examples if e["feature"] == f and e["split"] == side and e["label"] == 1}
                for side in ("explain", "test")}
        assert docs["explain"] and docs["test"] and not docs["explain"] & docs["test"]
    assert (tmp_path / "run" / "score_vs_rate.png").is_file() and (tmp_path / "run" / "manifest.json").is_file()


def test_coin_flip_judge_scores_about_half(planted, tmp_path):
    summary = run_interpret(_cfg(planted, tmp_path / "run", n_test_positives=40, n_test_negatives=40,
                                 control_fraction=0.0), backend=ScriptedLLM("coin"), echo=lambda s: None)
    feats = _features(tmp_path / "run")
    for r in feats.values():
        lo, hi = r["score"]["balanced_accuracy_ci"]
        assert lo <= 0.5 <= hi
    assert abs(summary["mean_score"] - 0.5) < 0.12 and summary["n_interpretable"]["0.6"] == 0


def test_unparseable_answers_are_missing_not_no(planted, tmp_path):
    summary = run_interpret(_cfg(planted, tmp_path / "run", control_fraction=0.0), backend=ScriptedLLM(garbage=True),
                            echo=lambda s: None)
    for r in _features(tmp_path / "run").values():
        s = r["score"]
        assert s["n_missing"] == s["n_items"] and s["n_pos"] == s["n_neg"] == 0 and s["tnr"] is None  # undefined: null, never bare NaN
    assert summary["missing_rate"] == 1.0 and summary["n_interpretable"]["0.6"] == 0


def test_crash_then_resume_makes_no_duplicate_calls_and_same_results(planted, tmp_path):
    fresh = ScriptedLLM()
    run_interpret(_cfg(planted, tmp_path / "fresh"), backend=fresh, echo=lambda s: None)
    crashing = ScriptedLLM(fail_after=len(fresh.prompts) // 2)
    with pytest.raises(ExceptionGroup):
        run_interpret(_cfg(planted, tmp_path / "run"), backend=crashing, echo=lambda s: None)
    resumed = ScriptedLLM()
    run_interpret(_cfg(planted, tmp_path / "run"), backend=resumed, echo=lambda s: None)
    assert not set(crashing.prompts) & set(resumed.prompts)  # nothing asked twice
    assert len(crashing.prompts) + len(resumed.prompts) == len(fresh.prompts)
    assert _features(tmp_path / "run") == _features(tmp_path / "fresh")
    warm = ScriptedLLM()
    summary = run_interpret(_cfg(planted, tmp_path / "run"), backend=warm, echo=lambda s: None)
    assert warm.prompts == [] and summary["usage"]["calls"] == 0


def test_max_calls_stops_cleanly_and_resumes(planted, tmp_path):
    first = ScriptedLLM()
    summary = run_interpret(_cfg(planted, tmp_path / "run", max_calls=30), backend=first, echo=lambda s: None)
    assert summary["stopped"] and not summary["complete"] and len(first.prompts) <= 30
    second = ScriptedLLM()
    summary = run_interpret(_cfg(planted, tmp_path / "run"), backend=second, echo=lambda s: None)
    assert summary["complete"] and not set(first.prompts) & set(second.prompts)


def test_dry_run_counts_calls_without_calling(planted, tmp_path, caplog):
    llm = ScriptedLLM()
    with caplog.at_level("INFO", logger="bitlens"):
        report = run_interpret(_cfg(planted, tmp_path / "run", dry_run=True, control_fraction=0.0), backend=llm)
    assert llm.prompts == [] and report["calls"] == 4 * (1 + 40) and report["prompt_tokens"] > 0
    assert "dry run" in caplog.text
    assert not (tmp_path / "run" / "summary.json").exists()


def test_comsem_mode_bookkeeping(planted, tmp_path):
    summary = run_interpret(_cfg(planted, tmp_path / "run", mode="comsem", comsem_top_k=2, control_fraction=0.0),
                            backend=ScriptedLLM(), echo=lambda s: None)
    examples = [json.loads(line) for line in open(tmp_path / "run" / "examples.jsonl")]
    for f, r in _features(tmp_path / "run").items():
        rows = [e["row"] for e in examples if e["feature"] == f]
        if r["status"] == "too_few_examples":
            assert r["n_assigned"] < 6 and not rows
            continue
        assert rows == sorted(rows)  # corpus order
        assert [e["split"] for e in examples if e["feature"] == f] == ["explain"] * 5 + ["test"] * (len(rows) - 5)
        assert 6 <= len(rows) <= 13 and r["score"]["n_items"] == len(rows) - 5
        assert 0.0 <= r["score"]["score"] <= 1.0
    assert summary["mode"] == "comsem" and "n_interpretable_lower_bound" in summary


def test_explanations_copied_from_a_worked_example_are_flagged(planted, tmp_path):
    from bitlens.interpretation.prompts import COMSEM_EXPLAIN

    class Copier(ScriptedLLM):
        async def complete(self, request):
            reply = await super().complete(request)
            if not request.choices:
                reply.text = COMSEM_EXPLAIN.shots[0][1]
            return reply

    summary = run_interpret(_cfg(planted, tmp_path / "run", mode="comsem", comsem_top_k=2, control_fraction=0.0),
                            backend=Copier(), echo=lambda s: None)
    assert summary["n_explanations_copying_worked_example"] == summary["n_scored"] > 0
    assert summary["n_distinct_explanations"] == 1
