"""ICL prompt construction (no leaks, proper sampling), email parsing, and the ICL analysis on a tiny model."""

import json

import numpy as np
import pytest

from bitlens.data import icl_tasks
from bitlens.data.icl_tasks import (Example, ICLTask, email_text, make_prompts, one_line, sample_demonstrations,
                                    split_task)

from data_fixtures import tiny_model_dir


def toy_task(n_groups=40, per_group=5) -> ICLTask:
    examples = [Example(f"text {g}-{i} about topic {g % 3}", "whale" if g % 2 else "budget", f"doc{g}")
                for g in range(n_groups) for i in range(per_group)]
    return ICLTask("toy", "sentence:", "topic:", ["whale", "budget"], examples)


def test_split_is_by_group_and_queries_are_balanced():
    task = toy_task()
    queries, pool = split_task(task, 12, seed=0)
    assert {q.group for q in queries}.isdisjoint({p.group for p in pool})
    assert [q.label for q in queries].count("whale") == 6 and [q.label for q in queries].count("budget") == 6
    assert len(queries) + len(pool) <= len(task.examples)


def test_prompts_never_leak_the_query_answer():
    task = toy_task()
    queries, pool = split_task(task, 12, seed=0)
    for k in (0, 1, 4, 8):
        for prompt in make_prompts(task, queries, pool, k, seed=3):
            query = queries[prompt.query]
            lines = prompt.text.split("\n")
            assert len(lines) == k + 1
            # the prompt ends with the label prefix itself: no answer, no trailing space
            assert lines[-1] == f"sentence: {query.text} topic:" and prompt.text.endswith("topic:")
            # the query is nowhere among the demonstrations, nor anything from its document
            assert all(query.text not in line for line in lines[:-1])
            assert all(pool[i].group != query.group for i in prompt.demonstrations)
            assert all(line.endswith((" whale", " budget")) for line in lines[:-1])
            assert prompt.label == query.label


def test_demonstrations_are_balanced_and_vary():
    task = toy_task()
    queries, pool = split_task(task, 12, seed=0)
    a = make_prompts(task, queries, pool, 4, seed=0)
    b = make_prompts(task, queries, pool, 4, seed=1)
    for prompt in a:
        labels = [pool[i].label for i in prompt.demonstrations]
        assert labels.count("whale") == 2 and labels.count("budget") == 2
        assert len(set(prompt.demonstrations)) == 4
    # different prompts under one seed, and the same prompt under different seeds, get different demonstrations
    assert len({tuple(p.demonstrations) for p in a}) > len(a) // 2
    assert sum(pa.demonstrations != pb.demonstrations for pa, pb in zip(a, b)) > len(a) // 2
    # the same seed reproduces the same prompts
    assert [p.text for p in a] == [p.text for p in make_prompts(task, queries, pool, 4, seed=0)]
    # an odd k gives the remainder to a random label
    labels = [pool[i].label for i in sample_demonstrations(pool, task.labels, 3, np.random.default_rng(0))]
    assert sorted(labels.count(label) for label in task.labels) == [1, 2]


def test_fixed_demonstrations_reproduce_the_reference_quirk():
    task = toy_task()
    queries, pool = split_task(task, 8, seed=0)
    prompts = make_prompts(task, queries, pool, 3, seed=0, fixed_demonstrations=True)
    assert all(p.demonstrations == [0, 1, 2] for p in prompts)


def test_split_refuses_too_many_queries():
    from bitlens.io import BitlensError

    with pytest.raises(BitlensError, match="fewer queries"):
        split_task(toy_task(n_groups=4, per_group=2), 40, seed=0)


def test_email_text_keeps_subject_and_body_and_strips_html():
    raw = ("From a@b.c  Thu Aug 22 13:17:22 2002\nReturn-Path: <a@b.c>\nSubject: Cheap offer\n"
           "MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"XX\"\n\n--XX\n"
           "Content-Type: text/html; charset=us-ascii\n\n<html><body><p>Buy &amp; save</p>"
           "<script>evil()</script></body></html>\n--XX--\n")
    text = one_line(email_text(raw), 200)
    assert text == "Cheap offer. Buy & save"
    assert one_line("a  b\n c " + "x" * 50, 10) == "a b c"


def test_icl_analysis_on_a_tiny_model(tmp_path, monkeypatch):
    from bitlens.cli.main import main

    monkeypatch.setattr(icl_tasks, "load_task", lambda name, max_chars=200, cache=None: toy_task())
    out = tmp_path / "icl"
    args = ["entropy", "icl", "--model", str(tiny_model_dir()), "--tasks", "spam", "--ks", "0,1,2",
            "--n-queries", "16", "--layers", "1", "4", "--steps", "10", "--batch-size", "16", "--fit-on", "last",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "icl.json").read_text())
    task = summary["tasks"]["spam"]
    assert [a["k"] for a in task["accuracy"]] == [0, 1, 2]
    assert all(0 <= a["accuracy"] <= 1 for a in task["accuracy"])
    assert [entry["layer"] for entry in task["layers"]] == [1, 4]
    for entry in task["layers"]:
        assert [c["k"] for c in entry["curve"]] == [0, 1, 2]
        assert all(c["entropy_bits"] >= 0 and "accuracy" in c for c in entry["curve"])
        assert all(c["entropy_bits_ci95"][0] <= c["entropy_bits"] <= c["entropy_bits_ci95"][1] for c in entry["curve"])
    prompts = json.loads((out / "spam" / "prompts_k2.json").read_text())
    assert prompts["last_tokens"] and all(t.endswith(":") for t in prompts["last_tokens"])
    assert (out / "icl.png").stat().st_size > 0
    # resume: the saved states and finished BAEs are reused, not recomputed
    states = out / "spam" / "states_k1.npy"
    before = states.stat().st_mtime_ns
    assert main(args) == 0
    assert states.stat().st_mtime_ns == before
    # finished BAEs of another width are refused, not reused; a new folder takes the width
    assert main(args + ["--expansion", "2"]) == 2
    narrow = tmp_path / "icl_x1"
    narrow.mkdir()
    for f in (out / "spam").glob("*_k*.*"):  # the saved states: only the BAEs are made again
        (narrow / "spam").mkdir(exist_ok=True)
        (narrow / "spam" / f.name).write_bytes(f.read_bytes())
    assert main(args[:-3] + ["--out", str(narrow), "--no-progress", "--expansion", "1"]) == 0
    cfg = json.loads((narrow / "spam" / "bae_layer_01" / "checkpoint" / "cfg.json").read_text())
    d = np.load(narrow / "spam" / "states_k0.npy").shape[-1]
    assert cfg["config"]["expansion"] == 1
    rows = json.loads((narrow / "icl.json").read_text())["tasks"]["spam"]["layers"]
    assert [r["d_prime"] for r in rows] == [d, d] and all(r["train_rows"] + r["val_rows"] == 3 * 16 for r in rows)


def test_last_token_states_do_not_depend_on_batching():
    from bitlens.experiments.icl import label_token_ids, last_token_states
    from bitlens.data.models import load_model

    lm = load_model(tiny_model_dir())
    task = toy_task()
    queries, pool = split_task(task, 8, seed=0)
    texts = [p.text for k in (0, 2, 1) for p in make_prompts(task, queries, pool, k, seed=0)][:9]
    ids = label_token_ids(lm.tokenizer, task.labels)
    batched = last_token_states(lm, texts, [1, 4], ids, batch=4)
    single = last_token_states(lm, texts, [1, 4], ids, batch=1)
    np.testing.assert_allclose(batched[0], single[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(batched[1], single[1], rtol=1e-4, atol=1e-4)
    assert batched[2] == single[2]


def test_label_prefix_ends_point_just_past_each_demonstration_label_prefix():
    from bitlens.data.icl_tasks import label_prefix_ends

    task = toy_task()
    queries, pool = split_task(task, 8, seed=0)
    for prompt in make_prompts(task, queries, pool, 4, seed=1):
        ends = label_prefix_ends(task, [pool[i] for i in prompt.demonstrations])
        assert len(ends) == 4
        for end, i in zip(ends, prompt.demonstrations):
            assert prompt.text[:end].endswith(f"{pool[i].text} topic:") and prompt.text[end:].startswith(" ")


def test_demonstration_states_are_the_states_of_the_prompt_cut_there():
    """A causal model's state at a demonstration's label prefix is the last-token state of the prompt cut just
    after it: so these rows are the query's token, seen after fewer demonstrations."""
    from bitlens.data.icl_tasks import label_prefix_ends
    from bitlens.data.models import load_model
    from bitlens.experiments.icl import label_token_ids, last_token_states

    lm = load_model(tiny_model_dir())
    task = toy_task()
    queries, pool = split_task(task, 8, seed=0)
    prompts = make_prompts(task, queries, pool, 3, seed=0)
    marks = [label_prefix_ends(task, [pool[i] for i in p.demonstrations]) for p in prompts]
    ids = label_token_ids(lm.tokenizer, task.labels)
    batched = last_token_states(lm, [p.text for p in prompts], [1, 4], ids, batch=4, marks=marks)
    single = last_token_states(lm, [p.text for p in prompts], [1, 4], ids, batch=1, marks=marks)
    assert len(batched.marked) == 3 * len(prompts) and batched.marked_tokens == batched.last_tokens[:1]
    np.testing.assert_array_equal(batched.marked_prompt, np.repeat(np.arange(len(prompts)), 3))
    np.testing.assert_allclose(batched.marked, single.marked, rtol=1e-4, atol=1e-4)
    cut = [p.text[:end] for p, ends in zip(prompts, marks) for end in ends]
    truth = last_token_states(lm, cut, [1, 4], ids, batch=4)
    np.testing.assert_allclose(single.marked, truth.last, rtol=1e-4, atol=1e-4)
    assert not last_token_states(lm, [p.text for p in prompts], [1], ids, batch=4).marked.size  # none asked


def test_icl_fit_on_demonstrations_holds_out_whole_queries(tmp_path, monkeypatch):
    from bitlens.cli.main import main

    monkeypatch.setattr(icl_tasks, "load_task", lambda name, max_chars=200, cache=None: toy_task())
    out = tmp_path / "icl"
    args = ["entropy", "icl", "--model", str(tiny_model_dir()), "--tasks", "spam", "--ks", "0,2,4", "--n-queries",
            "20", "--layers", "2", "--steps", "10", "--batch-size", "16", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "icl.json").read_text())
    assert summary["fit_on"] == "demonstrations"
    row = summary["tasks"]["spam"]["layers"][0]
    assert row["val_rows"] == 2 * 3  # a tenth of 20 queries, at each of the 3 ks
    assert row["train_rows"] == 18 * 3 + 18 * (0 + 2 + 4)  # their last tokens + every demonstration's label prefix
    prompts = [np.load(out / "spam" / f"demonstration_prompt_k{k}.npy") for k in (0, 2, 4)]
    assert [len(p) for p in prompts] == [0, 40, 80]
    assert (out / "spam" / "bae_demonstrations_layer_02" / "result.json").is_file()
    last = json.loads((out / "spam" / "prompts_k4.json").read_text())
    assert last["demonstration_tokens"] == last["last_tokens"]  # the same token as the query's
    # the saved states are reused on a rerun
    saved = out / "spam" / "demonstration_states_k2.npy"
    before = saved.stat().st_mtime_ns
    assert main(args) == 0 and saved.stat().st_mtime_ns == before
