"""Issue 12: the sparse start, target-distortion training (dual ascent) and the planted-code families."""

import json
import math

import pytest
import torch

from bitlens import BAEConfig, LossConfig, TrainConfig, train_bae
from bitlens.cli.main import main
from bitlens.data.sources import split_rows
from bitlens.data.synthetic import bernoulli_bits, known_entropy_data, planted_code
from bitlens.io import BitlensError
from bitlens.training.dual import CONTROLLER_STEPS, FVUController, controller_for
from bitlens.training.config import apply_preset
from bitlens.training.trainer import Trainer, init_bae, read_metrics

CFG = dict(steps=60, batch_size=64, eval_every=20, checkpoint_every=20, progress=False)


def test_sparse_start_ties_directions_and_fires_at_the_rate():
    x, _ = known_entropy_data(4096, 32, 6, seed=1, noise=0.05)
    model = init_bae(BAEConfig(d_in=32, init_rate=0.05), x, LossConfig(), seed=0)
    w_in, w_out = model.encoder.weight, model.decoder.weight  # [d', d], [d, d']
    assert torch.allclose(w_in.norm(dim=1), torch.ones(128), atol=1e-5)
    cos = (w_in * w_out.t()).sum(1) / w_out.t().norm(dim=1)
    assert torch.allclose(cos, torch.ones(128), atol=1e-5)
    rate = model.encode(x).mean(0)  # per unit, on the rows the quantiles came from (8192 cap > 4096)
    assert rate.min() > 0.04 and rate.max() < 0.06
    old = init_bae(BAEConfig(d_in=32, init="torch"), x, LossConfig(), seed=0)
    assert old.encode(x).mean() > 0.3  # PyTorch's start fires about half the units: the case the sparse one fixes


def test_controller_moves_the_weight_towards_the_target_and_round_trips():
    c = FVUController(target=0.1, dual_lr=0.1, horizon=1)
    c.update(0.5, penalties_on=False)  # warm-up: running estimate only
    assert c.log_scale == 0 and c.fvu_running == 0.5 and c.updates == 0 and c.seen == 1
    c.update(0.5, penalties_on=True)  # FVU above target: cheaper bits, lower weight (error clipped to 1)
    assert c.log_scale == pytest.approx(-0.1)
    c.update(0.05, penalties_on=True)  # FVU below target: the relative error is -0.5, so the weight rises
    assert c.log_scale == pytest.approx(-0.05)
    c.update(float("nan"), penalties_on=True)  # ignored
    d = FVUController(target=0.1, dual_lr=0.1, horizon=1)
    d.load(json.loads(json.dumps(c.state())))
    assert d == c and d.scale == pytest.approx(math.exp(-0.05))


def test_calibration_re_anchors_the_running_fvu_on_held_out_rows():
    c = FVUController(target=0.2, dual_lr=0.1, horizon=1, calibrate_every=5)
    c.update(0.18, penalties_on=False)
    assert not c.due(5)  # the multiplier has not started moving: nothing to calibrate
    c.update(0.18, penalties_on=True)  # training FVU below the target: the weight rises
    assert c.log_scale > 0 and c.due(5) and not c.due(6)
    c.calibrate(0.26)  # the held-out rows are harder by 0.08
    assert c.offset == pytest.approx(0.08)
    before = c.log_scale
    c.update(0.18, penalties_on=True)  # the same training FVU now reads as 0.26 > 0.2: the weight falls
    assert c.log_scale < before
    c.calibrate(float("nan"))  # an undefined measurement keeps the last gap
    assert c.offset == pytest.approx(0.08)
    d = FVUController(target=0.2, dual_lr=0.1, horizon=1, calibrate_every=5)
    d.load(json.loads(json.dumps(c.state())))
    assert d == c
    old = {k: v for k, v in c.state().items() if k != "offset"}  # a checkpoint from before calibration
    d.load(old)
    assert d.offset == 0
    assert controller_for(LossConfig(), 400).calibrate_every == 40
    assert controller_for(LossConfig(), 8000).calibrate_every == CONTROLLER_STEPS // 10
    assert controller_for(LossConfig(target_on="training"), 400).calibrate_every == 0
    from bitlens.training.config import synth_loss  # i.i.d. planted rows: a measured gap is noise there

    assert controller_for(synth_loss(), 8000).calibrate_every == 0


def test_target_on_validation_holds_the_held_out_fvu_when_held_out_rows_are_harder(tmp_path):
    """Held-out rows with extra noise sit above the training rows' FVU; only the calibrated controller brings the
    held-out FVU (the one every run reports) to the target."""
    x, _ = known_entropy_data(6144, 32, 5, seed=4, noise=0.05)
    tr, va = split_rows(x, 0.25, 0)
    noisy = va.rows(65536)
    noisy = noisy + 0.3 * noisy.std() * torch.randn(noisy.shape, generator=torch.Generator().manual_seed(1))
    from bitlens.data.sources import TensorRows

    va = TensorRows(noisy)
    cfg = TrainConfig(**{**CFG, "steps": 300, "batch_size": 128, "eval_every": 100})
    fvu = {}
    for on in ("training", "validation"):
        _, stats = train_bae(tr, va, tmp_path / on, cfg=cfg, loss=LossConfig(target_fvu=0.3, prune=False,
                                                                                target_on=on))
        fvu[on] = stats["fvu"]
    offsets = [r["train/fvu_offset"] for r in read_metrics(tmp_path / "validation") if "train/fvu_offset" in r]
    assert offsets and offsets[-1] > 0.02  # the held-out rows are harder than the training rows
    assert "train/fvu_offset" not in read_metrics(tmp_path / "training")[-1]
    assert fvu["training"] - 0.3 > 0.02, fvu  # without calibration the held-out FVU ends above the target
    assert abs(fvu["validation"] - 0.3) < abs(fvu["training"] - 0.3) - 0.01, fvu


def test_controller_time_scale_follows_short_runs_and_stops_growing_at_1000_steps():
    # an 8000-step run with the time scale of its whole length overshot to FVU 0.27 and ended at 0.2235 (target 0.2)
    short, long = controller_for(LossConfig(), 400), controller_for(LossConfig(), 8 * CONTROLLER_STEPS)
    assert (short.dual_lr, short.horizon) == (pytest.approx(10 / 400), 13)
    assert (long.dual_lr, long.horizon) == (pytest.approx(10 / CONTROLLER_STEPS), CONTROLLER_STEPS // 30)
    whole = controller_for(LossConfig(controller_span=0), 8000)  # synth's: a planted code's FVU 0 is below any target
    assert (whole.dual_lr, whole.horizon) == (pytest.approx(10 / 8000), 8000 // 30)
    fixed = controller_for(LossConfig(dual_lr=0.5, fvu_horizon=7), 8000)
    assert (fixed.dual_lr, fixed.horizon) == (0.5, 7)
    assert controller_for(LossConfig(target_fvu=0), 8000) is None


def _fair(seed=3):
    x, _ = known_entropy_data(4096, 32, 4, seed=seed)
    return split_rows(x, 0.2, 0)


@pytest.mark.parametrize("target, direction", [(0.6, 1), (0.0005, -1)])
def test_target_sets_the_direction_of_the_weight(tmp_path, caplog, target, direction):
    tr, va = _fair()
    # the controller alone: pruning's least-squares refit reconstructs this noise-free code exactly
    loss = LossConfig(target_fvu=target, prune=False)
    _, stats = train_bae(tr, va, tmp_path / "r", cfg=TrainConfig(**{**CFG, "steps": 150, "batch_size": 256}),
                         loss=loss)
    records = read_metrics(tmp_path / "r")
    for key in ("train/fvu_running", "train/entropy_weight", "train/lambda"):
        assert key in records[-1]
    assert stats["target_fvu"] == target
    lo, hi = stats["entropy_bits_ci95"]  # bootstrap over the held-out tokens
    assert lo <= stats["entropy_bits"] <= hi
    weights = [r["train/entropy_weight"] for r in records]
    if direction > 0:  # a loose target: bits are bought too dearly at the start, so the weight has to rise
        assert max(weights) > loss.entropy_weight
    else:  # an unreachable one: the weight only falls, and the run says its bits are not at the target
        assert weights[-1] < min(weights[:-1]) < loss.entropy_weight
        assert stats["target_reached"] is False and "not at its target" in caplog.text
    assert stats["target_reached"] == (abs(stats["fvu"] - target) <= 0.01) and stats["target_slack"] is False
    fixed, _ = train_bae(tr, va, tmp_path / "f", cfg=TrainConfig(**{**CFG, "steps": 20}), loss=LossConfig(target_fvu=0))
    assert "train/entropy_weight" not in read_metrics(tmp_path / "f")[-1]


def test_resume_is_exact_with_the_controller(tmp_path):
    tr, va = _fair()
    loss = LossConfig(target_fvu=0.1, dual_lr=0.05)
    full, _ = train_bae(tr, va, tmp_path / "full", cfg=TrainConfig(**CFG), loss=loss)
    model = init_bae(BAEConfig(d_in=32), tr.rows(65536), loss, 0)
    Trainer(model, tr, va, TrainConfig(**CFG), loss, tmp_path / "half").fit(until=40)
    state = json.loads((tmp_path / "half" / "checkpoint" / "trainer_state.json").read_text())
    assert state["dual"]["updates"] > 0
    resumed, _ = train_bae(tr, va, tmp_path / "half", resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert read_metrics(tmp_path / "full") == read_metrics(tmp_path / "half")


def test_a_checkpoint_from_before_calibration_resumes_as_it_was_trained(tmp_path):
    tr, va = _fair()
    loss = LossConfig(target_fvu=0.1, target_on="training")
    model = init_bae(BAEConfig(d_in=32), tr.rows(65536), loss, 0)
    Trainer(model, tr, va, TrainConfig(**CFG), loss, tmp_path / "old").fit(until=20)
    state_file = tmp_path / "old" / "checkpoint" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["loss_config"]["target_on"], state["dual"]["offset"]
    state_file.write_text(json.dumps(state))
    resumed = Trainer.resume(tmp_path / "old", tr, va)
    assert resumed.loss_cfg.target_on == "training" and resumed.controller.calibrate_every == 0


def test_paper_preset_trains_with_fixed_weights_and_the_old_start(tmp_path):
    bae, train, loss = apply_preset("paper", BAEConfig(), TrainConfig(steps=40), LossConfig())
    assert loss.target_fvu == 0 and bae.init == "torch"
    tr, va = _fair()
    with pytest.raises(BitlensError, match="scale_free"):
        train_bae(tr, va, tmp_path / "p", cfg=TrainConfig(**CFG), loss=LossConfig(preset="paper", target_fvu=0.1))


@pytest.mark.parametrize("family, features", [("fair", 6), ("nonuniform", 10), ("superposed", 40), ("noisy", 5)])
def test_planted_families_have_their_stated_entropy_and_noise_floor(family, features):
    code = planted_code(family, 40000, 16 if family == "superposed" else 32, features, seed=2)
    assert code.true_bits == pytest.approx(float(bernoulli_bits(code.rates).sum()))
    empirical = float(bernoulli_bits(code.codes.mean(0)).sum())
    assert empirical == pytest.approx(code.true_bits, rel=0.03)
    if family == "fair":
        assert code.true_bits == pytest.approx(6)
        assert torch.equal(code.x, known_entropy_data(40000, 32, 6, seed=2)[0])  # the same data as before
    if family == "superposed":
        assert code.rates.min() >= 0.005 - 1e-9 and code.rates.max() <= 0.05 + 1e-9
    # the noise floor: FVU of the best linear decoder of the planted bits, measured
    if family == "noisy":
        xc, cc = code.x - code.x.mean(0), code.codes - code.codes.mean(0)
        resid = xc - cc @ torch.linalg.lstsq(cc, xc).solution
        assert float(resid.pow(2).sum() / xc.pow(2).sum()) == pytest.approx(code.noise_fvu, rel=0.05)
    else:
        assert code.noise_fvu == 0
    with pytest.raises(ValueError, match="more features"):
        planted_code("superposed", 100, 16, 16)


def test_noisy_family_keeps_its_noise_floor_at_every_dimension():
    """The noise is fixed in total variance, not per coordinate: d = 64 keeps std 0.05 (the data of earlier runs),
    and the floor at d = 512 is the floor at d = 64 (with std 0.05 per coordinate it was 0.39 instead of 0.074)."""
    small, large = planted_code("noisy", 4000, 64, 8, seed=1), planted_code("noisy", 4000, 512, 8, seed=1)
    assert small.noise_fvu == pytest.approx(large.noise_fvu) == pytest.approx(0.16 / (8 * 0.25 + 0.16))
    g = torch.Generator().manual_seed(1)  # d = 64: the same draws as the former std 0.05 per coordinate
    directions = torch.randn(8, 64, generator=g)
    directions = directions / directions.norm(dim=1, keepdim=True)
    c = (torch.rand(4000, 8, generator=g) < 0.5).float()
    assert torch.allclose(small.x, c @ directions + 0.05 * torch.randn(4000, 64, generator=g), atol=1e-6)
    explicit = planted_code("noisy", 4000, 512, 8, seed=1, noise=0.05)  # --noise still sets the std per coordinate
    assert explicit.noise_fvu == pytest.approx(512 * 0.0025 / (2 + 512 * 0.0025))


def test_synth_cli_family_writes_target_and_truth(tmp_path, capsys):
    rc = main(["synth", "--family", "nonuniform", "--bits", "3", "--dim", "8", "--rows", "2048", "--steps", "60",
               "--batch-size", "256", "--no-progress", "--out", str(tmp_path / "s")])
    assert rc == 0
    summary = json.loads((tmp_path / "s" / "synth.json").read_text())
    row = summary["results"][0]
    assert summary["target_fvu_above_floor"] == 0.02 and row["target_fvu"] == 0.02
    assert row["true_bits"] == pytest.approx(float(bernoulli_bits(torch.logspace(math.log10(0.05), math.log10(0.5),
                                                                                  3)).sum()))
    assert "within_tolerance" in row and "true_bits_sample" in row
    assert "target 0.02" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["config"]["train"]["revive_every"] == -1  # one mechanism: synth revives too
    assert manifest["config"]["loss"]["controller_span"] == 0  # but its controller follows the whole run
    assert main(["synth", "--family", "superposed", "--bits", "4", "--dim", "8", "--out", str(tmp_path / "x")]) == 2


def test_threshold_readout_floor_is_zero_without_superposition_and_positive_with_it():
    """The readout floor: exact for r <= d independent directions, above 0 when features outnumber dimensions."""
    from bitlens.analysis.readout import threshold_readout
    from bitlens.data.synthetic import planted_code

    fair = planted_code("nonuniform", 4000, 16, 8, seed=1)
    exact = threshold_readout(fair.x, fair.codes, steps=200)
    assert exact.fvu < 1e-3 and exact.bit_error < 1e-3
    assert abs(exact.bits - fair.true_bits) < 0.3
    sup = planted_code("superposed", 4000, 16, 32, seed=1)
    lossy = threshold_readout(sup.x, sup.codes, steps=200)
    assert 0.005 < lossy.fvu < 0.1 and 0 < lossy.bit_error < 0.01  # measured: 0.0155, 0.0004


def test_minibatch_readout_finds_the_full_batch_floor():
    """Shuffled minibatches (what ``synth`` uses, affordable at d = 512) read the code as well as the full batch."""
    from bitlens.analysis.readout import threshold_readout
    from bitlens.data.synthetic import planted_code

    sup = planted_code("superposed", 8000, 16, 32, seed=1)
    full = threshold_readout(sup.x, sup.codes, steps=200)
    mini = threshold_readout(sup.x, sup.codes, steps=200, batch_rows=1000)  # 8 passes over the rows
    assert abs(mini.fvu - full.fvu) < 0.2 * full.fvu and mini.bit_error < 2 * full.bit_error + 1e-4
    assert not torch.equal(mini.weight, full.weight)  # a different fit, not the full batch under another name


def test_readout_decoder_from_normal_equations_is_least_squares_on_the_rows():
    """The sparse normal equations give the rows' least squares, also with a bit that never fires and a repeated one."""
    from bitlens.analysis.readout import _least_squares_decoder

    g = torch.Generator().manual_seed(0)
    read = (torch.rand(3000, 12, generator=g) < 0.1).float()
    read[:, 3] = 0  # never fires
    read[:, 7] = read[:, 5]  # the same bit twice
    x = read @ torch.randn(12, 6, generator=g) + 0.1 * torch.randn(3000, 6, generator=g)
    design = torch.cat([read, torch.ones(3000, 1)], 1).double()
    solution = _least_squares_decoder(read, x)
    expected = torch.linalg.lstsq(design, x.double(), driver="gelsd").solution  # the default gelsy errs here
    torch.testing.assert_close(design @ solution, design @ expected, rtol=0, atol=1e-9)
