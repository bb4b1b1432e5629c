"""Issue 12: pruning a BAE trained to a target FVU (least-squares decoder refit + backward elimination of units)."""

import dataclasses
import json

import pytest
import torch

from bitlens import BAEConfig, LossConfig, TrainConfig, train_bae
from bitlens.analysis.entropy import bernoulli_entropy_bits
from bitlens.data.sources import split_rows
from bitlens.data.synthetic import planted_code
from bitlens.training.prune import prune_to_target
from bitlens.training.trainer import init_bae


def _fvu(model, x):
    with torch.no_grad():
        return float((model(x).reconstruction - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def _planted_model(copies: int):
    """A BAE whose first 3 units read 3 planted fair bits exactly, with ``copies`` duplicates of bit 0 and one
    constant-on unit; the decoder is left at its start, so only the refit can reconstruct."""
    code = planted_code("fair", 3000, 12, 3, seed=0)
    model = init_bae(BAEConfig(d_in=12, expansion=2), code.x, LossConfig(), seed=0)
    with torch.no_grad():
        xn = code.x / model.input_scale
        # encoder rows that reproduce the bits: x is affine in the bits, so least squares reads them exactly;
        # the threshold sits halfway
        sol = torch.linalg.lstsq(torch.cat([xn, torch.ones(len(xn), 1)], 1), code.codes.float()).solution
        rows, bias = sol[:-1].t(), sol[-1] - 0.5
        model.encoder.weight.zero_()
        model.encoder.bias.fill_(-1.0)
        units = [0, 1, 2] + [0] * copies
        for u, b in enumerate(units):
            model.encoder.weight[u], model.encoder.bias[u] = rows[b], bias[b]
        model.encoder.bias[len(units)] = 5.0  # constant-on
    return model, code


def test_refit_and_elimination_drop_duplicates_and_keep_the_true_bits():
    model, code = _planted_model(copies=2)
    assert torch.equal(model.encode(code.x)[:, :3].bool(), code.codes.bool())
    result = prune_to_target(model, code.x, target_fvu=0.02)
    assert result.active_before == 5 and sorted(result.pruned) in ([0, 3], [0, 4], [3, 4])
    assert result.fvu_refit < 1e-8 and result.fvu_after < 1e-8 < result.fvu_before
    assert result.bits_before == pytest.approx(5 * 1.0, abs=0.01) and result.bits_after == pytest.approx(3.0, abs=0.01)
    rates = model.encode(code.x).mean(0)
    assert float(bernoulli_entropy_bits(rates).sum()) == pytest.approx(3.0, abs=0.01)
    assert rates[5] == 0  # the constant-on unit is off; the decoder bias carries its column
    assert _fvu(model, code.x) < 1e-8


def test_elimination_stops_at_the_budget():
    model, code = _planted_model(copies=0)
    loose = prune_to_target(model, code.x, target_fvu=0.5)  # one fair bit of three carries about a third
    assert len(loose.pruned) >= 1 and loose.fvu_after <= 0.5
    model, code = _planted_model(copies=0)
    tight = prune_to_target(model, code.x, target_fvu=0.01)
    assert tight.pruned == [] and tight.fvu_after < 1e-8


def test_training_to_a_target_prunes_logs_and_is_idempotent_on_resume(tmp_path):
    code = planted_code("fair", 4000, 16, 3, seed=2)
    tr, va = split_rows(code.x, 0.2, 0)
    cfg = TrainConfig(steps=300, batch_size=128, lr=1e-2, eval_every=100, checkpoint_every=100, progress=False)
    loss = LossConfig(target_fvu=0.05, entropy_weight=10.0, cov_weight=1000.0)
    bae = BAEConfig(expansion=2)
    model, final = train_bae(tr, va, tmp_path / "run", bae=bae, cfg=cfg, loss=loss)
    log = json.loads((tmp_path / "run" / "pruning.json").read_text())
    assert final["pruned"] == len(log["pruned"]) and log["fvu_after"] <= max(0.05, log["fvu_refit"]) + 1e-6
    assert log["fvu_refit"] <= log["fvu_before"] + 1e-6  # the least-squares decoder is at least as good
    assert final["bits_before_pruning"] >= final["entropy_bits"] - 1e-6
    assert final["target_reached"] == (abs(final["fvu"] - 0.05) <= 0.01 or final["target_slack"])
    # the budget is calibrated on the validation rows the final FVU is reported on
    assert log["checked_on"] == "validation" and log["check_rows"] == va.n_rows and log["rows"] == tr.n_rows
    assert log["fvu_check_after"] == pytest.approx(final["fvu"], abs=1e-3)
    again, final2 = train_bae(tr, va, tmp_path / "run", resume=True)
    assert final2["entropy_bits"] == pytest.approx(final["entropy_bits"], abs=1e-6)
    off, _ = train_bae(tr, va, tmp_path / "off", bae=bae, cfg=dataclasses.replace(cfg, steps=20), loss=LossConfig(**{**loss.to_dict(), "prune": False}))
    assert not (tmp_path / "off" / "pruning.json").exists()


def test_a_refit_that_generalises_worse_is_undone_when_nothing_is_dropped():
    """Few rows, many units: the least-squares refit overfits the fitted rows. With nothing to drop (a target below
    reach) the trained decoder, here the least-squares one of a large sample, must stay."""
    torch.manual_seed(0)
    x = torch.randn(20000, 16)
    model = init_bae(BAEConfig(d_in=16, expansion=8), x, LossConfig(), seed=0)
    with torch.no_grad():
        model.encoder.bias[0] = 1e4  # constant-on: switched off only if the refit is kept
        xn = x / model.input_scale
        code = (model.encoder(xn) > 0).float()
        # unit 0 is the intercept: a separate column of ones beside it would make the system rank-deficient, and
        # its solution (split between the two) then depends on the LAPACK driver's rounding
        model.decoder.weight.copy_(torch.linalg.lstsq(code, xn).solution.t())
        model.decoder.bias.zero_()
    before = [p.clone() for p in model.decoder.parameters()]
    result = prune_to_target(model, x[:400], target_fvu=0.001)  # far below reach: nothing can go
    assert result.pruned == [] and result.fvu_refit < result.fvu_before  # the refit fits its own rows better...
    assert not result.refit_kept  # ...but not the held-back ones, so it is undone
    assert all(torch.equal(a, b) for a, b in zip(before, model.decoder.parameters()))
    assert result.fvu_check_after == result.fvu_check_before and float(model.encoder.bias[0]) == 1e4


def test_check_rows_calibrate_the_budget_with_a_gap_of_either_sign():
    model, code = _planted_model(copies=2)
    noisy = code.x + 0.05 * torch.randn(code.x.shape, generator=torch.Generator().manual_seed(0))
    harder = prune_to_target(model, code.x, target_fvu=0.5, check_rows=noisy)
    assert harder.checked_on == "validation" and harder.rows == len(code.x) and harder.gap > 0
    assert harder.pruned and harder.fvu_check_after <= 0.5 + 1e-6  # the check rows end within the target
    model, code = _planted_model(copies=2)
    easier = prune_to_target(model, noisy, target_fvu=0.5, check_rows=code.x)  # fitted on the noisy rows
    assert easier.gap < 0 and easier.budget_fvu > 0.5
