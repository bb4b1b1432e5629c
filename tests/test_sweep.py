"""`bitlens sweep` end to end on a tiny real Llama: points, sweep.json, the four plots, point-by-point resume; and
the frontier bookkeeping (monotonicity, matched FVU) on hand-made rows."""

from __future__ import annotations

import json
import shutil

import pytest

from bitlens.cli.main import main
from bitlens.experiments.frontier import matched_fvu, monotonicity
from data_fixtures import tiny_store

FIELDS = ("coder", "setting", "fvu", "l0", "l0_minority", "entropy_bits", "dead_frac", "dense_frac",
          "constant_on_frac", "ce_recovered", "kl", "lexical_f1")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("s"))


def test_sweep_writes_frontiers_and_resumes_point_by_point(store, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--store", str(store), "--layer", "2", "--out", str(out), "--points", "2",
            "--bae-targets", "0.5,0.3", "--topk-ks", "4,8", "--relu-l1", "0.2,0.05", "--steps", "16",
            "--batch-size", "32", "--eval-tokens", "300", "--splice-tokens", "40", "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "sweep.json").read_text())
    points = summary["points"]
    assert [(p["coder"], p["setting"]) for p in points] == [
        ("bae", {"target_fvu": 0.5}), ("bae", {"target_fvu": 0.3}), ("bae", {"preset": "paper"}),
        ("relu_sae", {"l1_weight": 0.2}), ("relu_sae", {"l1_weight": 0.05}),
        ("topk_sae", {"k": 4}), ("topk_sae", {"k": 8}),
        ("jumprelu_sae", {"target_l0": 4}), ("jumprelu_sae", {"target_l0": 8})]  # JumpReLU follows TopK's k
    for p in points:
        for key in FIELDS:
            assert p[key] is not None, (p["label"], key)
        assert 0 <= p["dead_frac"] <= 1 and p["ce_recovered"] == p["ce_recovered"]  # spliced: not NaN
    assert max(p["l0"] for p in points if p["coder"] == "topk_sae") <= 8 + 1e-9
    assert set(summary["coders"]) == {"bae", "relu_sae", "topk_sae", "jumprelu_sae"}
    for path in ("frontier_l0.png", "frontier_ce.png", "frontier_units.png", "frontier_lexical.png"):
        assert (out / path).stat().st_size > 1000
    assert summary["trained_this_run"] == 9

    # a rerun trains nothing and splices nothing
    stamps = {p["run"]: (tmp_path / p["run"]).joinpath("checkpoint", "model.safetensors").stat().st_mtime_ns
              for p in points}
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "splicing" not in text and "0 trained or resumed this run" in text
    again = json.loads((out / "sweep.json").read_text())
    assert again["trained_this_run"] == 0
    assert [{k: p[k] for k in FIELDS} for p in again["points"]] == [{k: p[k] for k in FIELDS} for p in points]

    # one point lost (a crash before it finished): only that point is trained and spliced again
    shutil.rmtree(out / "points" / "topk_sae" / "k_8")
    assert main(argv) == 0
    assert "splicing 1 point(s)" in capsys.readouterr().out
    assert json.loads((out / "sweep.json").read_text())["trained_this_run"] == 1
    for run, stamp in stamps.items():
        if not run.endswith("k_8"):
            assert (tmp_path / run).joinpath("checkpoint", "model.safetensors").stat().st_mtime_ns == stamp


def test_sweep_refuses_a_ladder_shorter_than_points(store, tmp_path, capsys):
    assert main(["sweep", "--store", str(store), "--out", str(tmp_path / "o"), "--points", "3",
                 "--topk-ks", "4,8"]) == 2
    assert "topk_ks has 2 values but points is 3" in capsys.readouterr().err


def _row(coder, label, fvu, setting=None, **metrics):
    return {"coder": coder, "label": label, "setting": setting or {}, "fvu": fvu, "steps": 100, **metrics}


def test_monotonicity_names_rises_and_missed_targets():
    rows = [_row("topk_sae", "k_8", 0.40), _row("topk_sae", "k_16", 0.30), _row("topk_sae", "k_32", 0.301),
            _row("relu_sae", "l1_0.4", 0.5), _row("relu_sae", "l1_0.2", 0.35), _row("relu_sae", "l1_0.1", 0.37),
            _row("bae", "target_fvu_0.3", 0.30, {"target_fvu": 0.3}),
            _row("bae", "target_fvu_0.2", 0.25, {"target_fvu": 0.2}),
            _row("bae", "target_fvu_0.1", 0.26, {"target_fvu": 0.1}),
            _row("bae", "target_fvu_0.05", 0.26, {"target_fvu": 0.05}),
            _row("bae", "paper", 0.9, {"preset": "paper"})]  # the paper point is no rung: never a rise
    mono = monotonicity(rows)
    assert mono["topk_sae"] == {"monotone": True, "fvu": [0.40, 0.30, 0.301], "note": ""}  # within the tolerance
    assert not mono["relu_sae"]["monotone"] and "from 0.3500 (l1_0.2) to 0.3700 (l1_0.1)" in mono["relu_sae"]["note"]
    assert not mono["bae"]["monotone"]
    assert "target 0.2 not reached" in mono["bae"]["note"] and "target 0.1 not reached" in mono["bae"]["note"]
    assert "target 0.3 not" not in mono["bae"]["note"]
    over = monotonicity([_row("bae", "target_fvu_0.35", 0.24, {"target_fvu": 0.35})])["bae"]
    assert over["monotone"] and "FVU 0.2400 below its target 0.35" in over["note"]


def test_matched_fvu_interpolates_inside_the_shared_range():
    rows = [_row("a", "1", 0.4, dead_frac=0.0), _row("a", "2", 0.2, dead_frac=0.2),
            _row("b", "1", 0.5, dead_frac=0.5), _row("b", "2", 0.3, dead_frac=0.1), _row("b", "3", 0.1, dead_frac=0.0)]
    m = matched_fvu(rows)
    assert m["levels"] == [0.2, 0.3, 0.4]  # the overlap of [0.2, 0.4] and [0.1, 0.5]
    at = {(r["coder"], r["fvu"]): r["dead_frac"] for r in m["rows"]}
    assert at[("a", 0.3)] == pytest.approx(0.1) and at[("b", 0.4)] == pytest.approx(0.3)
    assert at[("b", 0.2)] == pytest.approx(0.05)
    assert matched_fvu([_row("a", "1", 0.4), _row("b", "1", 0.1)])["levels"] == []  # no overlap: no levels


def test_lexical_rule_is_scored_on_rows_it_was_not_chosen_on():
    import numpy as np
    import torch

    from bitlens.analysis.lexical import held_out_rule_f1, mean_lexical_f1

    rng = np.random.default_rng(0)
    token = rng.integers(0, 20, 4000)
    state = np.isin(token, [3, 7])  # a purely lexical feature: perfect out of sample
    fit = np.arange(4000) % 2 == 0
    assert held_out_rule_f1(token, state, fit) == 1.0
    unique = np.arange(4000)  # every token once: in-sample any state is "lexical", out of sample none is
    assert held_out_rule_f1(unique, rng.random(4000) < 0.1, fit) == 0.0
    codes = torch.from_numpy(np.stack([state, rng.random(4000) < 0.3, np.zeros(4000, bool)], 1).astype(np.float32))
    m = mean_lexical_f1(codes, token)
    assert m["n"] == 2 and m["n_lexical"] == 1 and 0.5 < m["mean_f1"] < 0.8  # the dead column is left out
