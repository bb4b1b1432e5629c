"""SAE baselines, transcoder and random control: forward definitions, pseudo-derivatives, training behaviour."""

from __future__ import annotations

import pytest
import torch

from bitlens.analysis.statistics import coder_statistics, evaluate_coder
from bitlens.coders.jumprelu import jumprelu, step
from bitlens.coders.random_control import RandomConfig
from bitlens.coders.registry import build, load, save_coder
from bitlens.coders.sae import SAEConfig
from bitlens.data.sources import PairedRows, TensorRows, split_rows
from bitlens.training.config import TrainConfig
from bitlens.training.run import train_coder
from bitlens.training.sae_objective import SparsityConfig

QUIET = dict(progress=False, eval_every=1000, checkpoint_every=1000)


def test_topk_keeps_exactly_k():
    torch.manual_seed(0)
    model = build("topk_sae", SAEConfig(d_in=16, k=7))
    x = torch.randn(300, 16) * 3
    a = model.encode(x)
    pre = model.pre_activation(x)
    assert ((a != 0).sum(-1) <= 7).all() and (a >= 0).all()
    full = (pre > 0).sum(-1) >= 7  # rows with at least k positive pre-activations keep exactly k
    assert full.any() and ((a[full] != 0).sum(-1) == 7).all()
    kept = torch.gather(pre, -1, a.abs().argsort(-1, descending=True)[:, :7])
    assert torch.equal(kept[full].sort(-1).values, pre[full].topk(7, -1).values.sort(-1).values)
    official = build("topk_sae", SAEConfig(d_in=16, k=7, topk_relu=False))
    official.load_state_dict(model.state_dict())
    assert ((official.encode(x) != 0).sum(-1) == 7).all()  # no ReLU: always k, negatives included


def test_jumprelu_pseudo_derivatives_match_the_formulas():
    z = torch.tensor([[0.10, 0.5004, 0.4996, 0.9, -1.0]], requires_grad=True)
    theta = torch.tensor([0.2, 0.5, 0.5, 0.9003, 0.0], requires_grad=True)
    eps = 0.001
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    (jumprelu(z, theta, eps) * g).sum().backward()
    window = ((z - theta).abs() < eps / 2).float()
    assert torch.equal(z.grad, g * (z > theta).float())
    torch.testing.assert_close(theta.grad, (-(theta / eps) * window * g).detach()[0])
    z.grad = theta.grad = None
    (step(z, theta, eps) * g).sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    torch.testing.assert_close(theta.grad, (-(1 / eps) * window * g)[0])
    assert torch.equal(step(z, theta, eps), (z > theta).float())


def test_jumprelu_threshold_rises_and_l0_falls_with_the_sparsity_weight(tmp_path, synth8):
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    runs = {}
    for weight in (0.0, 0.2):
        model, stats = train_coder("jumprelu_sae", tr, va, tmp_path / f"w{weight}",
                                   SAEConfig(threshold=0.05, bandwidth=0.05),
                                   TrainConfig(steps=300, batch_size=256, **QUIET),
                                   SparsityConfig(weight=weight, warmup=0))
        runs[weight] = (float(model.threshold.detach().mean()), stats["l0"])
    (theta0, l0_0), (theta1, l0_1) = runs[0.0], runs[0.2]
    assert theta1 > theta0 + 0.01 and theta1 > 0.05  # raised by the L0 penalty, above its start
    assert l0_1 < 0.9 * l0_0, runs


def test_fixed_threshold_variant_does_not_learn_theta(tmp_path, synth8):
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    model, _ = train_coder("jumprelu_sae", tr, va, tmp_path / "fixed", SAEConfig(threshold=0.5, learn_threshold=False),
                           TrainConfig(steps=20, batch_size=256, **QUIET))
    assert torch.equal(model.threshold, torch.full((64,), 0.5))
    assert "threshold" not in dict(model.named_parameters())


@pytest.mark.parametrize("arch", ["relu_sae", "topk_sae", "jumprelu_sae", "transcoder"])
def test_save_load_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    model = build(arch, SAEConfig(d_in=8, d_out=6 if arch == "transcoder" else 0, k=3))
    model.fit_scales(torch.randn(50, 8) * 4, torch.randn(50, 6) if arch == "transcoder" else None)
    save_coder(model, tmp_path / arch)
    again = load(tmp_path / arch)
    x = torch.randn(10, 8)
    assert torch.equal(model(x).reconstruction, again(x).reconstruction)


def test_relu_l1_lowers_l0_and_training_beats_the_mean(tmp_path, synth8):
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    l0 = {}
    for weight in (0.0, 0.3):
        _, stats = train_coder("relu_sae", tr, va, tmp_path / f"r{weight}", None,
                               TrainConfig(steps=200, batch_size=256, **QUIET), SparsityConfig(weight=weight))
        l0[weight] = stats["l0"]
        assert stats["fvu"] < 0.5
    assert l0[0.3] < 0.7 * l0[0.0]


def test_random_control_matches_rates_and_trains_only_its_decoder(tmp_path):
    x = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0)) + 3.0  # continuous: no tied projections
    tr, va = split_rows(x, 0.2, 0)
    rates = torch.linspace(0, 1, 64)
    directions = None

    def prepare(m):
        nonlocal directions
        m.match_rates(tr.rows(), rates)
        directions = m.directions.clone()
    model, stats = train_coder("random", tr, va, tmp_path / "rnd", RandomConfig(binary=True),
                               TrainConfig(steps=200, batch_size=256, **QUIET), prepare=prepare)
    got = torch.from_numpy(evaluate_coder(model, tr.rows()).frequencies).float()
    assert (got - rates).abs().max() <= 1.0 / tr.n_rows + 1e-6
    assert torch.equal(model.directions, directions)
    assert [n for n, _ in model.named_parameters()] == ["decoder.weight", "decoder.bias"]
    assert model.binary and set(model.encode(x[:100]).unique().tolist()) <= {0.0, 1.0}
    assert stats["dead"] == 1 and stats["constant_on"] >= 1


def test_transcoder_trains_on_pairs(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 12, generator=g) * 5
    w = torch.randn(12, 8, generator=g)
    y = torch.relu(x @ w) + 2.0
    tr_idx, va_idx = torch.arange(2400), torch.arange(2400, 3000)
    tr = PairedRows(TensorRows(x, tr_idx), TensorRows(y, tr_idx))
    va = PairedRows(TensorRows(x, va_idx), TensorRows(y, va_idx))
    model, stats = train_coder("transcoder", tr, va, tmp_path / "tc", None,
                               TrainConfig(steps=400, batch_size=256, **QUIET), SparsityConfig(weight=0.01))
    assert model.cfg.d_in == 12 and model.cfg.d_out == 8
    assert stats["fvu"] < 0.2
    direct = coder_statistics(model, x[2400:], y[2400:])
    assert direct["fvu"] == pytest.approx(stats["fvu"], rel=1e-6)
    # and a reconstruction of the input would be meaningless here: the target is y, not x
    assert model(x[:5]).reconstruction.shape == (5, 8)


def test_metric_definitions():
    """Mean predictor: FVU 1; perfect: FVU 0, cosine 1, relative norm 1; variance is about the mean."""
    class Fixed(torch.nn.Module):
        architecture, binary = "fixed", False

        def __init__(self, out):
            super().__init__()
            self.out = out
            self.p = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x):
            return torch.stack([(x[:, 0] > 10).float(), torch.zeros(len(x)), torch.ones(len(x))], 1)

        def decode(self, code):
            return self.out(code)

    x = torch.randn(1000, 4, dtype=torch.float64).float() + 10.0  # far from zero: variance about zero would differ
    mean = x.double().mean(0).float()
    s = coder_statistics(Fixed(lambda c: mean.expand(len(c), -1)), x, chunk=128)
    assert s["fvu"] == pytest.approx(1.0, abs=1e-6)
    idx = iter(range(10**9))

    class Perfect(Fixed):
        def decode(self, code):
            start = next(idx) * 128
            return x[start:start + len(code)]
    p = coder_statistics(Perfect(None), x, chunk=128)
    assert p["fvu"] == 0 and p["mse"] == 0 and p["cosine"] == pytest.approx(1) and p["relative_norm"] == pytest.approx(1)
    # fires = non-zero: unit 0 fires on about half the rows, unit 1 is dead, unit 2 constant-on
    assert p["dead"] == 1 and p["constant_on"] == 1 and p["dense"] == 1 and p["width"] == 3
    f0 = float((x[:, 0] > 10).float().mean())
    assert p["l0_minority"] == pytest.approx(min(f0, 1 - f0))  # the constant-on unit is never in its minority state
    assert p["l0"] == pytest.approx(1 + float((x[:, 0] > 10).float().mean()))


def test_firing_frequencies_match_the_evaluation():
    torch.manual_seed(0)
    model = build("relu_sae", SAEConfig(d_in=8))
    x = torch.randn(1000, 8)
    from bitlens.analysis.statistics import firing_frequencies

    f = firing_frequencies(model, x, chunk=300)
    assert torch.equal(f, torch.from_numpy(evaluate_coder(model, x).frequencies))


@pytest.mark.parametrize("arch", ["jumprelu_sae", "transcoder"])
def test_resume_equals_uninterrupted(tmp_path, synth8, arch):
    from bitlens.training.trainer import init_coder
    from bitlens.training.trainer import Trainer, read_metrics

    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    if arch == "transcoder":  # target: a fixed nonlinear function of the input, served as aligned pairs
        y = torch.tanh(x @ torch.randn(16, 8, generator=torch.Generator().manual_seed(1)))
        tr = PairedRows(TensorRows(x, tr.index), TensorRows(y, tr.index))
        va = PairedRows(TensorRows(x, va.index), TensorRows(y, va.index))
    cfg = TrainConfig(steps=60, batch_size=64, eval_every=20, checkpoint_every=20, progress=False)
    full, _ = train_coder(arch, tr, va, tmp_path / "full", None, cfg)
    targets = tr.target_rows(65536) if arch == "transcoder" else None
    coder = SAEConfig(d_in=16, d_out=8 if arch == "transcoder" else 0)
    model = init_coder(arch, coder, tr.rows(65536), SparsityConfig(), 0, targets)
    Trainer(model, tr, va, cfg, SparsityConfig(), tmp_path / "half").fit(until=40)
    resumed, _ = train_coder(arch, tr, va, tmp_path / "half", resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    records = read_metrics(tmp_path / "half")
    assert [r["step"] for r in records] == [20, 40, 60]
    assert {"train/loss", "train/recon", "train/sparsity", "train/l0", "val/fvu", "val/l0"} <= set(records[-1])
