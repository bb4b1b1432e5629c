"""The compiled (torch.compile) kernels of the fast step: same losses and gradients as the reference, deterministic,
bit-exact resume, and the eager fallback with its one notice.

The rest of the suite runs the eager kernels (``LossConfig.compile`` is off by default). Every test here uses the
same shapes ([64, 64] codes), so each kernel compiles once per session (and loads from inductor's disk cache on
later sessions).
"""

import itertools
import json
import logging

import pytest
import torch

from bitlens import BAEConfig, LossConfig, TrainConfig, train_bae
from bitlens.coders.bae import BinaryAutoencoder
from bitlens.data.sources import split_rows
from bitlens.ops import fused
from bitlens.training import fast_step
from bitlens.training.objective import bae_objective, reference_objective
from bitlens.training.trainer import Trainer, init_bae

B, D = 64, 16  # codes [64, 64]


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setenv("BITLENS_COMPILE", "1")
    if fused._failed is not None:
        pytest.fail(f"compiling was given up earlier in this session: {fused._failed}")
    yield
    assert fused._failed is None, fused._failed  # a silent fallback would make these tests test the eager path


def _force(monkeypatch, path):
    for name in fast_step.DENSITY_SWITCHES:
        monkeypatch.setattr(fast_step, name, 2.0 if path == "sparse" else -1.0)


def _grads(objective, model, x, cfg, step=50):
    model.zero_grad(set_to_none=True)
    terms = objective(model, x, cfg, 2.5, step, 100)
    terms.loss.backward()
    return terms, {k: p.grad.clone() for k, p in model.named_parameters()}


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30)) if b.norm() > 0 else float(a.norm())


def _model(surrogate, bias, seed=0):
    torch.manual_seed(seed)
    model = BinaryAutoencoder(BAEConfig(d_in=D, surrogate=surrogate, tau=0.5, init="torch"))
    with torch.no_grad():
        model.encoder.bias.add_(bias)
    x = torch.randn(B, D) * 3
    model.fit_input_scale(x)
    return model, x


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("surrogate", ["identity", "sigmoid", "paper", "official"])
def test_compiled_objective_equals_reference(compiled, monkeypatch, path, surrogate):
    _force(monkeypatch, path)
    for preset, bias, threshold in itertools.product(["scale_free", "paper"], [0.0, -1.5], [0.0, 1e6]):
        model, x = _model(surrogate, bias, seed=int(bias))
        weights = {"entropy_weight": 10.0, "cov_weight": 1000.0} if preset == "scale_free" else \
            {"entropy_weight": 1e-3, "cov_weight": 1e-3}
        cfg = LossConfig(preset=preset, entropy_threshold=threshold, compile=True, **weights)
        ref, g_ref = _grads(reference_objective, model, x, cfg)
        out, g = _grads(bae_objective, model, x, cfg)
        for name in ("loss", "recon", "entropy", "covariance"):
            r, f = getattr(ref, name).detach(), getattr(out, name).detach()
            assert abs(float(f - r)) <= 1e-5 * max(abs(float(r)), 1e-6), (name, float(f), float(r))
        for k in g_ref:
            assert _rel(g[k], g_ref[k]) <= 1e-4, (k, _rel(g[k], g_ref[k]), preset, bias, threshold)
    assert {"bits", f"epilogue/{surrogate}"} <= set(fused._compiled)  # the compiled kernels ran, not the fallback


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_compiled_step_is_deterministic_and_close_to_eager(compiled, monkeypatch, path):
    _force(monkeypatch, path)
    model, x = _model("sigmoid", -1.0)
    cfg = LossConfig(compile=True)
    runs = [_grads(bae_objective, model, x, cfg) for _ in range(2)]
    eager = _grads(bae_objective, model, x, LossConfig(compile=False))
    assert torch.equal(runs[0][0].loss, runs[1][0].loss)
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k]), k
        assert _rel(runs[0][1][k], eager[1][k]) <= 1e-5, k
    assert abs(float(runs[0][0].loss - eager[0].loss)) <= 1e-6 * abs(float(eager[0].loss))


def test_compiled_resume_equals_uninterrupted(compiled, tmp_path):
    x = torch.randn(2048, D, generator=torch.Generator().manual_seed(1))
    tr, va = split_rows(x, 0.2, 0)
    cfg = {"steps": 30, "batch_size": B, "eval_every": 10, "checkpoint_every": 10, "progress": False}
    loss = LossConfig(compile=True)
    full, _ = train_bae(tr, va, tmp_path / "full", cfg=TrainConfig(**cfg), loss=loss)
    model = init_bae(BAEConfig(d_in=D), tr.rows(65536), loss, 0)
    Trainer(model, tr, va, TrainConfig(**cfg), loss, tmp_path / "half").fit(until=20)
    state = json.loads((tmp_path / "half" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 20 and state["loss_config"]["compile"] is True  # the resumed run keeps its path
    resumed, _ = train_bae(tr, va, tmp_path / "half", resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_fallback_to_eager_with_one_notice(monkeypatch, caplog):
    monkeypatch.setenv("BITLENS_COMPILE", "1")
    monkeypatch.setattr(fused, "_failed", None)
    monkeypatch.setattr(fused, "_compiled", {})

    def broken(*args, **kwargs):
        raise RuntimeError("no backend\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    model, x = _model("sigmoid", -1.0)
    with caplog.at_level(logging.WARNING, logger="bitlens"):
        out = [_grads(bae_objective, model, x, LossConfig(compile=True)) for _ in range(2)]
    eager = _grads(bae_objective, model, x, LossConfig(compile=False))
    notices = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(notices) == 1 and "RuntimeError: no backend" in notices[0] and "\n" not in notices[0]
    assert torch.equal(out[0][0].loss, eager[0].loss) and torch.equal(out[1][0].loss, eager[0].loss)
    for k in eager[1]:
        assert torch.equal(out[0][1][k], eager[1][k]), k


def test_missing_compiler_is_detected_without_compiling(monkeypatch, caplog):
    monkeypatch.setenv("BITLENS_COMPILE", "1")
    monkeypatch.setattr(fused, "_failed", None)
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setenv("PATH", "/nonexistent")
    with caplog.at_level(logging.WARNING, logger="bitlens"):
        h, n, l = fused.bits_and_counts(torch.tensor([[0.5, -1.0], [2.0, 0.0]]), compiled=True)
    assert torch.equal(h, torch.tensor([[1.0, 0.0], [1.0, 0.0]])) and n.tolist() == [2.0, 0.0] and l.tolist() == [1, 1]
    assert fused._failed and "no C++ compiler" in fused._failed and not fused._compiled
    assert sum("torch.compile" in r.getMessage() for r in caplog.records) == 1
