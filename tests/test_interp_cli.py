"""`bitlens interpret` on the command line: one-line errors, dry run, and a hermetic replay of a cached run."""

from __future__ import annotations

import json

import pytest

from bitlens.cli.main import main
from bitlens.interpretation.config import InterpretConfig
from bitlens.interpretation.pipeline import run_interpret
from interp_fixtures import ScriptedLLM, make_planted_coder, make_planted_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted_cli")
    return make_planted_store(root / "store"), make_planted_coder(root / "coder")


@pytest.mark.parametrize("extra,message", [
    (["--llm", "bogus:x"], "the LLM must be"),
    (["--llm", "replay:gpt"], "replay needs"),
    (["--mode", "other"], "invalid choice: 'other'"),
    (["--features", "0,99"], "out of range"),
])
def test_bad_input_is_one_line(planted, tmp_path, capsys, extra, message):
    store, coder = planted
    code = main(["interpret", "--coder", str(coder), "--store", str(store), "--out", str(tmp_path / "o"),
                 "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_missing_store(tmp_path, capsys, planted):
    assert main(["interpret", "--coder", str(planted[1]), "--store", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_replay_reproduces_a_cached_run_without_calls(planted, tmp_path, capsys):
    store, coder = planted
    cfg = InterpretConfig(coder=str(coder), store=str(store), out=str(tmp_path / "live"), progress=False)
    run_interpret(cfg, backend=ScriptedLLM(), echo=lambda s: None)
    args = ["interpret", "--coder", str(coder), "--store", str(store), "--no-progress",
            "--llm", "replay:fake:scripted", "--cache", str(tmp_path / "live" / "cache.sqlite")]
    assert main([*args, "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert "dry run: 0 calls" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "replayed")]) == 0
    assert "0 LLM calls" in capsys.readouterr().out
    live = (tmp_path / "live" / "features.jsonl").read_text()
    assert (tmp_path / "replayed" / "features.jsonl").read_text() == live
    summary = json.loads((tmp_path / "replayed" / "summary.json").read_text())
    assert {"n_features", "n_scored", "n_interpretable", "mean_score", "controls"} <= set(summary)
    # a replay that misses stops with one line, keeping what it finished
    assert main([*args, "--out", str(tmp_path / "miss"), "--seed", "3"]) == 2
    assert "no cached reply" in capsys.readouterr().err
