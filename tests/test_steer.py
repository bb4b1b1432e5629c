"""ICL steering: built-in tasks and splits, task vectors, and the direction test on a planted task."""

import json

import numpy as np
import pytest
import torch

from bitlens.analysis.intervals import wilson
from bitlens.analysis.steering import centroid_vector, coder_vector
from bitlens.cli.main import main
from bitlens.coders.bae import BAEConfig, BinaryAutoencoder
from bitlens.coders.registry import save_coder
from bitlens.coders.sae import ReLUSAE, SAEConfig
from bitlens.data.icl_tasks import Example, ICLTask
from bitlens.data.steer_tasks import BUILTIN_TASKS, builtin_task, split_items
from bitlens.experiments.steer import SteerConfig, prompt_texts, run_prompts, steer_task

from data_fixtures import tiny_model_dir


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_tasks_split_without_overlap(name):
    task = builtin_task(name)
    inputs = [e.text for e in task.examples]
    assert len(inputs) == len(set(inputs)) >= 20  # one answer per input
    split = split_items(task, seed=0, n_estimate=8, n_evaluate=8)
    groups = [{e.group for e in side} for side in split]
    assert all(a.isdisjoint(b) for i, a in enumerate(groups) for b in groups[i + 1:])
    assert len(split.evaluate) + len(split.estimate) == min(16, len(inputs) - 8) and len(split.pool) >= 8
    assert len(split.evaluate) >= 6 and len(split.estimate) >= 6
    texts = prompt_texts(task, split.evaluate, split.pool, 4, 0, 1, "")
    for query, text in zip(split.evaluate, texts):
        lines = text.split("\n")
        assert len(lines) == 5 and lines[-1] == f"input: {query.text} output:"
        assert all(f"input: {query.text} " not in line for line in lines[:-1])  # never its own demonstration


def test_wilson_and_vectors():
    lo, hi = wilson(8, 10)
    assert 0.49 < lo < 0.5 and 0.94 < hi < 0.95 and wilson(0, 0) == (0.0, 1.0)
    torch.manual_seed(0)
    good, bad = torch.randn(50, 6) + 2, torch.randn(40, 6)
    c = centroid_vector(good, bad)
    assert torch.allclose(c.vector, good.mean(0) - bad.mean(0), atol=1e-6)
    bae = BinaryAutoencoder(BAEConfig(d_in=6, d_code=10))
    tv = coder_vector(bae, good, bad, top_k=3)
    codes_g, codes_b = bae.encode(good), bae.encode(bad)
    delta = codes_g.mean(0) - codes_b.mean(0)
    assert len(tv.units) <= 3 and set(tv.units) <= set(torch.argsort(delta.abs(), descending=True)[:3].tolist())
    v = torch.zeros(10)
    v[tv.units] = torch.sign(delta[tv.units])
    assert torch.allclose(tv.vector, bae.decoder.weight @ v * bae.input_scale, atol=1e-5)
    sae = ReLUSAE(SAEConfig(d_in=6, expansion=2))
    tv = coder_vector(sae, good, bad, top_k=2)
    delta = sae.encode(good).mean(0) - sae.encode(bad).mean(0)
    v = torch.zeros(12)
    v[tv.units] = delta[tv.units]
    assert torch.allclose(tv.vector, sae.decoder.weight @ v * sae.input_scale, atol=1e-5)


def _planted_model():
    """The tiny Llama with its last block (3) made a pass-through, so the logits at a position are
    head(norm(hidden_states[3])): a vector added there moves the logits by a known map."""
    from bitlens.data.models import load_model

    lm = load_model(str(tiny_model_dir()))
    with torch.no_grad():
        lm.blocks[3].self_attn.o_proj.weight.zero_()
        lm.blocks[3].mlp.down_proj.weight.zero_()
    return lm


def test_minus_tv_never_beats_plus_tv_on_a_planted_task():
    """Planted: every answer is 'whale' (labels whale / budget). A BAE has one live unit that fires on the k-shot
    states more than on the 0-shot ones (its encoder row is the centroid direction, threshold at the midpoint) and
    decodes to g * (w_whale - w_budget), which through the final RMSNorm (gain g) raises logit(whale) - logit(budget)
    by a positive multiple of sum g^2 (w_whale - w_budget)^2 once it dominates the state. So +tv must reach accuracy 1
    and -tv 0; a sign error anywhere (Delta, W_out, the hook) fails this."""
    lm = _planted_model()
    task = ICLTask("planted", "input:", "output:", ["whale", "budget"],
                   [Example(f"ship {i}", "whale", f"p/{i}") for i in range(40)])
    cfg = SteerConfig(coder="-", k=3, n_estimate=12, n_evaluate=10, top_k=4, normalize=False, progress=False,
                      strengths=[1.0])
    split = split_items(task, cfg.seed, cfg.n_estimate, cfg.n_evaluate)
    good, _ = run_prompts(lm, prompt_texts(task, split.estimate, split.pool, cfg.k, cfg.seed, 0, ""), 3, 16)
    bad, _ = run_prompts(lm, prompt_texts(task, split.estimate, split.pool, 0, cfg.seed, 0, ""), 3, 16)
    direction = good.mean(0) - bad.mean(0)
    direction = direction / direction.norm()
    midpoint = 0.5 * (good @ direction).mean() + 0.5 * (bad @ direction).mean()
    head = lm.model.get_output_embeddings().weight
    ids = [lm.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("whale", "budget")]
    gain = lm.model.model.norm.weight
    bae = BinaryAutoencoder(BAEConfig(d_in=32, d_code=6)).eval()
    with torch.no_grad():
        bae.encoder.weight.zero_()
        bae.encoder.bias.fill_(-1.0)  # units 1.. never fire
        bae.encoder.weight[0] = direction
        bae.encoder.bias[0] = -midpoint
        bae.decoder.weight[:, 0] = gain * (head[ids[0]] - head[ids[1]])
    scale = 1e3 * float(good.norm(dim=1).max()) / float(bae.decoder.weight[:, 0].detach().norm())
    cfg.strengths = [-scale, -scale / 10, scale / 10, scale]
    result = steer_task(lm, {"bae": bae}, task, 3, cfg)
    entry = result["methods"]["bae"]
    assert entry["units"] == [0] and entry["deltas"][0] > 0  # the planted unit fires more with demonstrations
    acc = {c["strength"]: c["accuracy"] for c in entry["curve"]}
    assert acc[scale] == 1.0 and acc[-scale] == 0.0
    for s in (scale, scale / 10):
        assert acc[-s] <= acc[s]
    assert result["n_evaluate"] == 10 and result["zero_shot"]["n"] == 10


def test_steer_command_on_a_tiny_model_and_a_compare_folder(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "cmp"
    bae = BinaryAutoencoder(BAEConfig(d_in=32, expansion=2))
    with torch.no_grad():
        bae.encoder.bias.fill_(0.1)
    save_coder(bae, folder / "coders" / "bae" / "checkpoint")
    save_coder(ReLUSAE(SAEConfig(d_in=32, expansion=2)), folder / "coders" / "relu_sae" / "checkpoint")
    (folder / "coders" / "unfinished").mkdir()
    out = tmp_path / "steer"
    args = ["steer", "--coder", str(folder), "--model", str(tiny_model_dir()), "--layer", "2", "--tasks",
            "first_letter", "number", "--k", "2", "--n-estimate", "4", "--n-evaluate", "5", "--strengths", "-1", "2",
            "--forward-batch", "8", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "steer.json").read_text())
    assert (out / "steer.png").stat().st_size > 0 and (out / "manifest.json").is_file()
    assert set(summary["tasks"]) == {"first_letter", "number"} and summary["layer"] == 2
    for task in summary["tasks"].values():
        assert set(task["methods"]) == {"centroid", "bae", "relu_sae"}
        for entry in task["methods"].values():
            assert [c["strength"] for c in entry["curve"]] == [-1.0, 2.0]
            for c in entry["curve"]:
                assert c["n"] == 5 and c["ci95"][0] <= c["accuracy"] <= c["ci95"][1] and 0 <= c["top1"] <= 1
            norms = {round(e["norm"], 4) for e in task["methods"].values() if e["raw_norm"] > 0}
            assert len(norms) == 1  # --normalize: every tv has the centroid's norm
    before = (out / "first_letter.json").stat().st_mtime_ns
    assert main(args) == 0  # cached per task
    assert (out / "first_letter.json").stat().st_mtime_ns == before
    assert main(args[:-1] + [str(tmp_path / "o2"), "--layer", "9"]) == 2  # the tiny model has blocks 0..3
    assert main(["steer", "--coder", str(tmp_path / "nothing"), "--model", "x", "--layer", "1"]) == 2
    assert np.isfinite(summary["tasks"]["number"]["zero_shot"]["accuracy"])


def test_a_small_task_shares_its_queries_between_estimation_and_evaluation():
    split = split_items(builtin_task("number"), seed=0, n_estimate=48, n_evaluate=48)
    assert len(split.pool) == 8 and len(split.evaluate) == 6 and len(split.estimate) == 7
