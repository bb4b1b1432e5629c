"""Issue 12: unit revival (dead and constant-on BAE units re-initialised towards high-error rows)."""

import json

import torch

from bitlens import BAEConfig, LossConfig, TrainConfig, train_bae
from bitlens.data.sources import split_rows
from bitlens.data.synthetic import planted_code
from bitlens.training.revival import revive_units
from bitlens.training.trainer import Trainer, init_bae, read_metrics


def _error(model, x):
    with torch.no_grad():
        return float((model(x).reconstruction - x).pow(2).sum())


def test_revival_reinitialises_dead_and_constant_on_units_and_lowers_the_error():
    code = planted_code("nonuniform", 4000, 16, 12, seed=0)
    model = init_bae(BAEConfig(d_in=16, expansion=2), code.x, LossConfig(), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(code.x).reconstruction.pow(2).sum().backward()
    opt.step()  # Adam now has moments to reset
    with torch.no_grad():
        model.encoder.bias[:5] = -1e4  # dead
        model.encoder.bias[5:8] = 1e4  # constant-on
    before = _error(model, code.x)
    rev = revive_units(model, opt, code.x, rate=0.05, step=10, seed=0)
    assert (rev.dead, rev.constant_on, rev.units) == (5, 3, list(range(8)))
    rates = model.encode(code.x).mean(0)
    assert ((rates[:8] > 0) & (rates[:8] <= 0.07)).all()  # about the rate (ties of a discrete code can lower it)
    assert _error(model, code.x) < before
    state = opt.state[model.encoder.weight]
    assert state["exp_avg"][:8].abs().sum() == 0 and state["exp_avg"][8:].abs().sum() > 0
    again = revive_units(model, opt, code.x, rate=0.05, step=20, seed=0)
    assert again.units == [] or set(again.units).isdisjoint(range(8))


def test_training_with_revival_logs_and_resumes_exactly(tmp_path):
    code = planted_code("superposed", 3000, 8, 24, seed=1)
    tr, va = split_rows(code.x, 0.2, 0)
    cfg = TrainConfig(steps=60, batch_size=128, lr=0.05, eval_every=20, checkpoint_every=20, progress=False,
                      revive_every=10, revive_until=1.0, revive_rows=1024)
    # a price no bit can pay: units die at once, revival brings them back and they die again
    loss = LossConfig(target_fvu=0, entropy_weight=300.0, entropy_start=0, entropy_ramp=0, cov_ramp=0)
    full, _ = train_bae(tr, va, tmp_path / "full", cfg=cfg, loss=loss)
    log = [json.loads(ln) for ln in (tmp_path / "full" / "revival.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40, 50, 60]
    assert sum(len(r["units"]) for r in log) > 0 and "train/revived" in read_metrics(tmp_path / "full")[-1]
    model = init_bae(BAEConfig(d_in=8), tr.rows(65536), loss, 0)
    Trainer(model, tr, va, cfg, loss, tmp_path / "half").fit(until=40)
    resumed, _ = train_bae(tr, va, tmp_path / "half", resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert (tmp_path / "half" / "revival.jsonl").read_text() == (tmp_path / "full" / "revival.jsonl").read_text()


def test_reviving_many_units_towards_heavy_tailed_rows_never_raises_the_error():
    """Layer 3 of SmolLM2 diverged when hundreds of units were revived at once: drawn towards the same rare huge
    rows, they co-fire there, and columns fitted one by one each added the whole residual. The joint fit cannot."""
    code = planted_code("nonuniform", 4000, 16, 12, seed=1)
    x = code.x.clone()
    x[::50] *= 300.0  # 2% attention-sink-like rows, hundreds of times the typical norm
    model = init_bae(BAEConfig(d_in=16, expansion=8), x, LossConfig(), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        model.encoder.bias[16:] = -1e6  # 112 of 128 units dead
    before = _error(model, x)
    rev = revive_units(model, opt, x, rate=0.03, step=10, seed=0)
    assert len(rev.units) >= 112
    assert _error(model, x) <= before
