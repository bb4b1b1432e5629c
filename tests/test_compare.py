"""`bitlens compare` end to end on a tiny real Llama: table, plots, side store of MLP sites, resume."""

from __future__ import annotations

import json

import pytest

from bitlens.cli.main import main
from data_fixtures import tiny_store

FIELDS = ("name", "fvu", "mse", "cosine", "l0", "dead_frac", "dense_frac", "constant_on_frac", "kl", "jsd",
          "ce_increase", "ce_recovered")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("s"))


def test_compare_writes_the_table_and_resumes(store, tmp_path, capsys):
    out = tmp_path / "cmp"
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"topk_sae": {"coder": {"k": 5}}, "splice": {"max_seq_len": 16, "batch_size": 2}}))
    argv = ["compare", "--store", str(store), "--layer", "2", "--out", str(out), "--config", str(config),
            "--steps", "30", "--splice-tokens", "60", "--eval-tokens", "500", "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "compare.json").read_text())
    names = [c["name"] for c in summary["coders"]]
    assert names == ["bae", "relu_sae", "topk_sae", "jumprelu_sae", "random", "transcoder"]
    for row in summary["coders"]:
        for key in FIELDS:
            assert key in row, (row["name"], key)
        assert row["width"] == 4 * 32
    topk = summary["details"]["topk_sae"]["stats"]
    assert topk["l0"] <= 5 + 1e-9
    assert (out / "frequencies.png").stat().st_size > 1000 and (out / "compare.md").exists()
    assert (out / "sites" / "manifest.json").exists()  # the store had no MLP sites: a side store was extracted
    assert summary["details"]["transcoder"]["splice"]["site"] == "mlp_out.2"
    # the random control fires at the BAE's rates (on the training sample; held-out rates are close)
    # rerun: nothing is retrained, the same table comes back
    stamps = {n: (out / "coders" / n / "checkpoint" / "model.safetensors").stat().st_mtime_ns for n in names}
    capsys.readouterr()
    assert main(argv) == 0
    out_text = capsys.readouterr().out  # progress lines go to stdout through logging
    assert out_text.count("reused") == 6 and "splicing" not in out_text
    assert stamps == {n: (out / "coders" / n / "checkpoint" / "model.safetensors").stat().st_mtime_ns for n in names}
    assert json.loads((out / "compare.json").read_text())["coders"] == summary["coders"]


def test_compare_resumes_an_interrupted_coder(store, tmp_path):
    """A coder whose run was cut short continues from its checkpoint instead of restarting."""
    from bitlens.experiments.compare import CompareConfig, run_compare

    out = tmp_path / "cmp"
    cfg = CompareConfig(store=str(store), layer=2, out=str(out), coders=["relu_sae"], steps=40, splice_tokens=0,
                        eval_tokens=300, progress=False)
    run_compare(cfg)
    state = out / "coders" / "relu_sae" / "checkpoint" / "trainer_state.json"
    data = json.loads(state.read_text())
    # pretend the run stopped at its step-32 checkpoint: rewind the step and drop the final metrics
    data["step"] = 32
    state.write_text(json.dumps(data))
    (out / "coders" / "relu_sae" / "final_metrics.json").unlink()
    lines = []
    run_compare(cfg, echo=lines.append)
    assert any("resumed" in ln for ln in lines)
    assert json.loads(state.read_text())["step"] == 40


def test_compare_rejects_bad_config(store, tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"topk": {}}))
    assert main(["compare", "--store", str(store), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "unknown key(s) topk" in capsys.readouterr().err


def test_compare_under_torchrun_trains_every_coder_in_two_processes(store, tmp_path):
    """`torchrun -m bitlens compare`: each coder trained by both processes (BAE with global-batch statistics, the
    SAEs with averaged gradients); process 0 alone evaluates and writes the table."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "bitlens", "compare", "--store", str(store), "--out", str(out), "--coders", "bae", "topk_sae",
           "random", "--steps", "6", "--eval-tokens", "200", "--splice-tokens", "0", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # process 0 reports
    summary = json.loads((out / "compare.json").read_text())
    assert [row["name"] for row in summary["coders"]] == ["bae", "topk_sae", "random"]
    for name in ("bae", "topk_sae"):
        manifest = json.loads((out / "coders" / name / "manifest.json").read_text())
        assert manifest["config"]["distributed"]["world_size"] == 2


def test_compare_match_fvu_trains_the_bae_to_the_saes_median(store, tmp_path, capsys):
    """--match-fvu: the SAEs train first and the BAE's target FVU is the median of their held-out FVUs."""
    import statistics

    out = tmp_path / "m"
    argv = ["compare", "--store", str(store), "--layer", "2", "--out", str(out), "--coders", "bae,relu_sae,topk_sae",
            "--match-fvu", "--steps", "30", "--splice-tokens", "0", "--eval-tokens", "300", "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert [c["name"] for c in summary["coders"]] == ["relu_sae", "topk_sae", "bae"]
    median = statistics.median(c["fvu"] for c in summary["coders"] if c["name"] != "bae")
    assert summary["bae_target_fvu"] == median
    settings = json.loads((out / "coders" / "bae" / "run_settings.json").read_text())
    assert settings["loss"]["target_fvu"] == median  # the BAE was trained to it, not to --target-fvu
    assert "matching the SAEs' median FVU" in capsys.readouterr().out
    assert main(argv) == 0 and "reused" in capsys.readouterr().out  # a rerun finds the same target: nothing retrained
    assert main(["compare", "--store", str(store), "--out", str(tmp_path / "x"), "--coders", "bae,random",
                 "--match-fvu"]) == 2
    assert "match_fvu needs bae and at least one of" in capsys.readouterr().err
