"""The TopK start (``BAEConfig.init = "topk"``): each unit aimed at a TopK SAE latent, cut by its best 1-bit
quantiser."""

import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bitlens import BAEConfig, LossConfig
from bitlens.cli.main import main
from bitlens.coders.multibit import MultiBitConfig
from bitlens.data.synthetic import planted_code
from bitlens.training.coder_init import binary_cut, init_bae


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-40, 40).map(lambda i: i / 8), st.floats(0, 10, allow_nan=False, width=32)),
                min_size=2, max_size=30, unique_by=lambda pair: pair[0]))
def test_binary_cut_is_the_best_threshold_code_of_the_activation(pairs):
    """Exact: no threshold on the pre-activation, with the best level for it, codes the activation better."""
    pre = torch.tensor([p for p, _ in pairs])[:, None]
    acts = torch.tensor([a for _, a in pairs])[:, None]
    threshold, level, used = binary_cut(pre, acts)
    assert bool(used) == bool((acts > 0).any())

    def error(fires):  # the best level for this firing set is the mean activation on it
        a = acts.double()[:, 0]
        c = a[fires].mean() if fires.any() else 0.0
        return float((a - c * fires.double()).pow(2).sum())

    fires = pre[:, 0] > threshold[0]
    assert fires.any()
    assert abs(float(acts[:, 0][fires].double().mean()) - float(level[0])) < 1e-5 * (1 + float(level[0]))
    best = min(error(pre[:, 0] >= v) for v in pre[:, 0])  # every cut between two distinct pre-activations
    assert error(fires) <= best + 1e-6 * (1 + best)


def test_binary_cut_separates_a_feature_from_small_leaks():
    pre = torch.tensor([[-1.0], [0.2], [0.3], [0.25], [1.0], [1.2], [0.9], [-0.5]])
    acts = torch.relu(pre) * (pre > 0.5)  # a TopK-like selection: the leaks lose, the feature wins
    acts[1:4] = torch.tensor([[0.05], [0.1], [0.08]])  # ... and a few leaks were selected anyway
    threshold, level, used = binary_cut(pre, acts)
    assert used.all() and 0.3 < float(threshold) < 0.9 and abs(float(level) - 31 / 30) < 1e-5


def _fvu(model, x):
    with torch.no_grad():
        rec = model(x).reconstruction
    return float((rec - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_topk_start_finds_superposed_features_before_any_bae_step():
    """32 rare features in 16 dimensions: the TopK start's units point at the features (cosine > 0.9 for most)
    and it reconstructs far better than the sparse start, before any BAE training."""
    code = planted_code("superposed", 8192, 16, 32, seed=3)
    truth = torch.linalg.lstsq(code.codes, code.x).solution
    truth = truth / truth.norm(dim=1, keepdim=True)
    loss = LossConfig()
    sparse = init_bae(BAEConfig(d_in=16, init="sparse"), code.x, loss, seed=0)
    topk = init_bae(BAEConfig(d_in=16, init="topk", init_steps=1000, init_rate=2 / 64), code.x, loss, seed=0)
    with torch.no_grad():
        fires = topk(code.x).code.mean(0) > 0
        directions = topk.decoder.weight.t()[fires]
        cos = truth @ (directions / directions.norm(dim=1, keepdim=True)).t()
    assert int((cos.max(1).values > 0.9).sum()) >= 27  # measured: 30 of 32
    assert _fvu(topk, code.x) < 0.5 * _fvu(sparse, code.x)  # measured: 0.089 vs 0.85


def test_topk_start_is_seeded_and_an_option_of_the_cli(tmp_path):
    code = planted_code("superposed", 2048, 8, 16, seed=1)
    cfg = BAEConfig(d_in=8, init="topk", init_steps=50)
    a = init_bae(cfg, code.x, LossConfig(), seed=5)
    b = init_bae(cfg, code.x, LossConfig(), seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="init_steps"):
        BAEConfig(d_in=8, init="topk", init_steps=0)
    assert main(["synth", "--family", "superposed", "--bits", "12", "--dim", "6", "--rows", "2048", "--steps", "30",
                 "--init-steps", "40", "--out", str(tmp_path / "s")]) == 0
    assert main(["synth", "--bits", "2", "--dim", "6", "--rows", "512", "--steps", "10", "--out", str(tmp_path / "f")]) == 0
    # init auto: synth starts its superposed family at topk, its dense planted codes at sparse; the files say so
    for run, start in (("s", "topk"), ("f", "sparse")):
        config = json.loads((tmp_path / run / "manifest.json").read_text())["config"]
        assert config["bae"]["init"] == start
        # ... and the superposed family's own target (SUPERPOSED_LOSS), held on the held-out rows
        assert (config["loss"]["target_fvu"], config["loss"]["target_on"]) == (
            (0.01, "validation") if run == "s" else (0.02, "training"))
        folder = tmp_path / run / ("r12" if run == "s" else "r2")
        assert json.loads((folder / "checkpoint" / "cfg.json").read_text())["config"]["init"] == start
    assert main(["synth", "--family", "superposed", "--bits", "12", "--dim", "6", "--rows", "1024", "--steps", "5",
                 "--init-steps", "5", "--target-on", "training", "--out", str(tmp_path / "t")]) == 0
    loss = json.loads((tmp_path / "t" / "manifest.json").read_text())["config"]["loss"]
    assert (loss["target_fvu"], loss["target_on"]) == (0.01, "training")  # a typed option wins
    with pytest.raises(ValueError, match="multi-bit"):
        MultiBitConfig(d_in=8, init="topk")
    assert MultiBitConfig(d_in=8).start == "sparse"
    import numpy as np

    np.save(tmp_path / "a.npy", code.x.numpy())
    assert main(["train", "--activations", str(tmp_path / "a.npy"), "--bits-per-unit", "2", "--init", "topk",
                 "--steps", "3", "--out", str(tmp_path / "mb")]) == 2
    assert not (tmp_path / "mb").exists()
