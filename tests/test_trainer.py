import json

import pytest
import torch

from bitlens import BAEConfig, LossConfig, TrainConfig, known_entropy_data, load, train_bae
from bitlens.data.sources import TensorRows, split_rows
from bitlens.io import BitlensError
from bitlens.training.trainer import Trainer, init_bae, read_metrics

CFG = dict(steps=60, batch_size=64, eval_every=20, checkpoint_every=20, progress=False)


def test_training_reduces_fvu_and_logs(tmp_path):
    x, _ = known_entropy_data(4096, 64, 4, seed=3)
    tr, va = split_rows(x, 0.2, 0)
    model, stats = train_bae(tr, va, tmp_path / "run", cfg=TrainConfig(**{**CFG, "steps": 400, "batch_size": 256}))
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(20, 401, 20))
    assert stats["fvu"] < 0.5
    for key in ("val/mse", "val/fvu", "val/cosine", "val/entropy_bits", "val/covariance", "val/l0", "val/dead",
                "val/constant_on", "val/dense", "train/loss"):
        assert key in records[-1]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["seeds"] == {"seed": 0} and manifest["config"]["bae"]["d_in"] == 64


def test_resume_equals_uninterrupted(tmp_path, synth8):
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    full, _ = train_bae(tr, va, tmp_path / "full", cfg=TrainConfig(**CFG))
    # the same run stopped at step 40 (checkpoint written), then resumed in a new Trainer
    model = init_bae(BAEConfig(d_in=16), tr.rows(65536), LossConfig(), 0)
    Trainer(model, tr, va, TrainConfig(**CFG), LossConfig(), tmp_path / "half").fit(until=40)
    state = json.loads((tmp_path / "half" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 40
    resumed, _ = train_bae(tr, va, tmp_path / "half", resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert [r["step"] for r in read_metrics(tmp_path / "half")] == [20, 40, 60]


def test_fit_in_segments_continues_one_batch_stream(tmp_path, synth8):
    """Issue 18: fit(until=...) called again carries on with the batches it left open (no shuffling-buffer group
    read again) and trains exactly as one call."""
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    whole = Trainer(init_bae(BAEConfig(d_in=16), tr.rows(65536), LossConfig(), 0), tr, va, TrainConfig(**CFG),
                    LossConfig(), tmp_path / "whole")
    whole.fit()
    model = init_bae(BAEConfig(d_in=16), tr.rows(65536), LossConfig(), 0)
    trainer = Trainer(model, tr, va, TrainConfig(**CFG), LossConfig(), tmp_path / "segments")
    opened = []
    batches = trainer._batches
    trainer._batches = lambda: opened.append(trainer.step) or batches()
    for until in (15, 30, 45, 60):
        trainer.fit(until=until)
    assert opened == [0]
    for (k, a), (_, b) in zip(whole.model.state_dict().items(), trainer.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_resume_can_extend_but_not_change_the_objective(tmp_path, synth8):
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    train_bae(tr, va, tmp_path / "r", cfg=TrainConfig(**CFG))
    _, stats = train_bae(tr, va, tmp_path / "r", resume=True, resume_overrides={"steps": 80})
    assert stats["step"] == 80
    with pytest.raises(BitlensError, match="cannot change lr"):
        train_bae(tr, va, tmp_path / "r", resume=True, resume_overrides={"lr": 0.1})


def test_interrupt_writes_checkpoint_and_resume_matches(tmp_path, synth8):
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    full, _ = train_bae(tr, va, tmp_path / "full", cfg=TrainConfig(**CFG))

    class Interrupting(TensorRows):
        calls = 0

        def batches(self, batch_size, epoch, seed, start=0):
            for b in super().batches(batch_size, epoch, seed, start):
                Interrupting.calls += 1
                if Interrupting.calls == 31:
                    raise KeyboardInterrupt
                yield b

    flaky = Interrupting(tr.data, tr.index)
    with pytest.raises(KeyboardInterrupt):
        train_bae(flaky, va, tmp_path / "int", cfg=TrainConfig(**CFG))
    state = json.loads((tmp_path / "int" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 30
    resumed, _ = train_bae(tr, va, tmp_path / "int", resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["step"] for r in read_metrics(tmp_path / "int")] == [20, 40, 60]


def test_refuses_to_overwrite_and_resume_without_checkpoint(tmp_path, synth8):
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    train_bae(tr, va, tmp_path / "r", cfg=TrainConfig(**{**CFG, "steps": 5}))
    with pytest.raises(BitlensError, match="already holds a checkpoint"):
        train_bae(tr, va, tmp_path / "r", cfg=TrainConfig(**CFG))
    with pytest.raises(BitlensError, match="nothing to resume"):
        train_bae(tr, va, tmp_path / "empty", resume=True)


def test_paper_preset_objective_is_raw(tmp_path, synth8):
    from bitlens.training.config import apply_preset
    from bitlens.training.objective import term_weights

    bae, train, loss = apply_preset("paper", BAEConfig(), TrainConfig(steps=2000), LossConfig())
    assert bae.surrogate == "official" and train.lr == 5e-4 and loss.preset == "paper"
    assert term_weights(loss, 256, 499, 2000) == (0.0, 1e-7)  # entropy off before a quarter of training
    assert term_weights(loss, 256, 500, 2000) == (1e-7, 1e-7)
    # the switch is a fraction of training, so a run sized by epochs gets it at its own quarter
    assert term_weights(loss, 256, 249, 1000)[0] == 0.0 and term_weights(loss, 256, 250, 1000)[0] == 1e-7
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    model, _ = train_bae(tr, va, tmp_path / "p", bae, TrainConfig(**{**CFG, "steps": 5}), loss)
    assert float(model.input_scale) == 1.0  # no input normalisation in the paper's objective
    assert load(tmp_path / "p").cfg.surrogate == "official"


def test_resume_or_refuse_accepts_a_run_made_before_an_option_existed(tmp_path, caplog):
    from bitlens.training.run import resume_or_refuse

    run = tmp_path / "r"
    old = {"train": {"steps": 10}, "loss": {"target_fvu": 0.2}}
    assert resume_or_refuse(run, old) == "new"
    newer = {"train": {"steps": 10}, "loss": {"target_fvu": 0.2, "prune": True}}
    with caplog.at_level("INFO", logger="bitlens"):
        assert resume_or_refuse(run, newer) == "new"  # no checkpoint yet, but the settings were accepted
    assert "predates the options loss.prune" in caplog.text
    assert json.loads((run / "run_settings.json").read_text())["loss"] == {"target_fvu": 0.2, "prune": True}
    with pytest.raises(BitlensError, match=r"other settings \(loss\)"):
        resume_or_refuse(run, {"train": {"steps": 10}, "loss": {"target_fvu": 0.3, "prune": True}})


def test_fused_adam_moments_keep_their_parameters_layout(tmp_path):
    """Issue 18: the trainer's Adam is torch's fused kernel, which pairs a parameter's entries with its moments'
    by memory position. The BAE's decoder weight is column-major and checkpoints store the moments contiguous, so
    restoring must give them the parameter's layout again, or a resumed step updates the wrong entries."""
    from safetensors.torch import save_file

    from bitlens.io import load_safetensors
    from bitlens.training.checkpoint import optimizer_tensors, restore_optimizer
    from bitlens.training.optim import adam

    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(30, 8).t()), torch.nn.Parameter(torch.randn(8))]  # column-major
    opt = adam(weights, 1e-2)
    assert opt.param_groups[0]["fused"] is True
    for p in weights:
        p.grad = torch.randn_like(p)
    opt.step()
    tensors, meta = optimizer_tensors(opt)
    save_file(tensors, str(tmp_path / "opt.safetensors"))
    twins = [torch.nn.Parameter(p.detach().clone()) for p in weights]
    assert twins[0].stride() == weights[0].stride()
    restored = adam(twins, 1e-2)
    restore_optimizer(restored, load_safetensors(tmp_path / "opt.safetensors"), json.loads(json.dumps(meta)))
    assert restored.state[twins[0]]["exp_avg"].stride() == twins[0].stride()
    grads = [torch.randn_like(p) for p in weights]
    for group, params in ((opt, weights), (restored, twins)):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        group.step()
    for a, b in zip(weights, twins):
        assert torch.equal(a, b)
