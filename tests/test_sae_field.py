"""The SAE baselines as the field trains them (issue 14): unit-norm decoder columns, TopK reading x - b_dec, the
AuxK dead-latent loss, JumpReLU at a target L0, and older checkpoints loading with these options off."""

from __future__ import annotations

import json

import torch

from bitlens.coders.registry import build, load, save_coder
from bitlens.coders.sae import SAEConfig
from bitlens.data.sources import split_rows
from bitlens.training.config import TrainConfig
from bitlens.training.run import train_coder
from bitlens.training.sae_objective import SparsityConfig, auxk_loss, sae_objective
from bitlens.training.trainer import Trainer, init_coder

QUIET = dict(progress=False, eval_every=1000, checkpoint_every=1000)


def fit(arch, coder, tr, va, out, steps, loss=None, batch_size=128):
    """A trained coder and its final validation statistics (the trainer alone: no curves, no manifest)."""
    loss = loss or SparsityConfig()
    model = init_coder(arch, coder, tr.rows(65536), loss, 0)
    last = Trainer(model, tr, va, TrainConfig(steps=steps, batch_size=batch_size, **QUIET), loss, out).fit()
    return model.eval(), {k[4:]: v for k, v in last.items() if k.startswith("val/")}


def test_unit_norm_decoder_columns_stay_unit(tmp_path, synth8):
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    for arch in ("topk_sae", "jumprelu_sae"):
        model, _ = fit(arch, SAEConfig(d_in=16, k=4), tr, va, tmp_path / arch, 30)
        torch.testing.assert_close(model.decoder.weight.norm(dim=0), torch.ones(model.width))
    relu, _ = fit("relu_sae", SAEConfig(d_in=16), tr, va, tmp_path / "relu", 30)
    assert not torch.allclose(relu.decoder.weight.norm(dim=0), torch.ones(relu.width))  # free columns, L1 by norm


def test_topk_encoder_reads_the_centred_input():
    torch.manual_seed(0)
    model = build("topk_sae", SAEConfig(d_in=8, k=2))
    with torch.no_grad():
        model.decoder.bias.normal_()
    x = torch.randn(5, 8)
    torch.testing.assert_close(model.pre_activation(x), model.encoder(x - model.decoder.bias))
    plain = build("topk_sae", SAEConfig(d_in=8, k=2, center_input=False))
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain.pre_activation(x), model.encoder(x))


def test_auxk_trains_only_dead_latents_on_the_residual():
    torch.manual_seed(0)
    model = init_coder("topk_sae", SAEConfig(d_in=16, k=2, aux_k=4), torch.randn(512, 16), SparsityConfig(), 0)
    dead = torch.zeros(model.width, dtype=torch.bool)
    dead[:10] = True
    model.tokens_since_fired[dead] = 10_000  # these have not fired for longer than the window
    x = torch.randn(64, 16)
    cfg = SparsityConfig(dead_tokens=1000)
    pre = model.pre_activation(x)
    residual = (x / model.input_scale - model.decode_normalized(model.activate(pre))).detach()
    auxk_loss(model, pre, residual, dead, 16.0).backward()
    touched = model.decoder.weight.grad.abs().sum(0) > 0
    assert touched[dead].any() and not touched[~dead].any()  # only dead columns reconstruct the residual
    terms = sae_objective(model, x, cfg, 16.0, 5, 100)
    assert terms.aux > 0 and float(terms.dead) == 10 / model.width
    # the clock: every latent that fired in the batch is reset, the others aged by the batch size
    fired = (model.encode(x) != 0).any(0)
    assert (model.tokens_since_fired[fired] == 0).all()
    assert (model.tokens_since_fired[~fired & ~dead] == 64).all()
    off = init_coder("topk_sae", SAEConfig(d_in=16, k=2, aux_k=0), torch.randn(512, 16), SparsityConfig(), 0)
    assert not hasattr(off, "tokens_since_fired") and float(sae_objective(off, x, cfg, 16.0, 5, 100).aux) == 0


def test_topk_with_auxk_resumes_exactly(tmp_path, synth8):
    """The dead-latent clock is part of the checkpoint: a resumed run repeats the uninterrupted one."""
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    coder, loss = SAEConfig(k=2, d_code=96, aux_k=8), SparsityConfig(dead_tokens=256)
    cfg = TrainConfig(steps=40, batch_size=64, eval_every=20, checkpoint_every=20, progress=False)
    full, _ = train_coder("topk_sae", tr, va, tmp_path / "full", coder, cfg, loss)
    model = init_coder("topk_sae", SAEConfig(d_in=16, k=2, d_code=96, aux_k=8), tr.rows(65536), loss, 0)
    Trainer(model, tr, va, cfg, loss, tmp_path / "half").fit(until=20)
    resumed, _ = train_coder("topk_sae", tr, va, tmp_path / "half", resume=True)
    assert int((full.tokens_since_fired > 256).sum()) > 0  # AuxK had dead latents to work on
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_jumprelu_starts_and_stays_near_its_target_l0(tmp_path, synth8):
    x, _ = synth8
    tr, va = split_rows(x, 0.2, 0)
    start = init_coder("jumprelu_sae", SAEConfig(d_in=16, init_l0=6), tr.rows(65536), SparsityConfig(), 0)
    assert abs(float((start.encode(va.rows()) != 0).sum(-1).float().mean()) - 6) < 1.5
    l0 = {}
    for target in (3, 12):
        _, stats = fit("jumprelu_sae", SAEConfig(d_in=16, init_l0=target), tr, va, tmp_path / f"t{target}", 150,
                       SparsityConfig(target_l0=target))
        l0[target] = stats["l0"]
    assert l0[3] < l0[12] and abs(l0[3] - 3) < 2 and abs(l0[12] - 12) < 5


def test_a_cfg_json_from_before_issue_14_loads_with_the_options_off(tmp_path):
    torch.manual_seed(0)
    model = build("topk_sae", SAEConfig(d_in=8, k=2, aux_k=0, unit_decoder=False, center_input=False))
    save_coder(model, tmp_path)
    meta = json.loads((tmp_path / "cfg.json").read_text())
    for name in ("aux_k", "unit_decoder", "center_input", "init_l0"):
        del meta["config"][name]  # what an older bitlens wrote
    (tmp_path / "cfg.json").write_text(json.dumps(meta))
    old = load(tmp_path)
    assert (old.cfg.aux_k, old.cfg.unit_decoder, old.cfg.center_input) == (0, False, False)
    x = torch.randn(4, 8)
    torch.testing.assert_close(old(x).reconstruction, model(x).reconstruction)
    assert SAEConfig.from_dict({}).aux_k == -1  # an empty object is the current defaults


def test_auxk_revives_planted_dead_latents(tmp_path):
    """Planted problem: every token holds one feature of group A (e_0..e_7) and, half the time, one of group B
    (e_8..e_15); k = 1. Latents 0-7 encode A at full scale; latents 8-15 have the right decoder columns but an
    encoder a tenth as large, so they never win the top 1: dead. Without AuxK nothing ever trains them (no gradient
    reaches a latent outside the top k); AuxK has them reconstruct the residual (the B part), their encoders grow,
    and they start winning on tokens whose B feature is the larger."""
    from bitlens.analysis.statistics import coder_statistics
    from bitlens.data.sources import TensorRows

    g = torch.Generator().manual_seed(0)
    n = 4096
    rows = torch.arange(n)
    x = torch.zeros(n, 16)
    x[rows, torch.randint(0, 8, (n,), generator=g)] = 1 + torch.rand(n, generator=g)
    has_b = torch.rand(n, generator=g) < 0.5
    x[rows[has_b], torch.randint(8, 16, (n,), generator=g)[has_b]] = 1 + torch.rand(int(has_b.sum()), generator=g)
    result = {}
    for aux_k in (0, 4):
        loss = SparsityConfig(dead_tokens=256)
        model = init_coder("topk_sae", SAEConfig(d_in=16, d_code=16, k=1, aux_k=aux_k), x, loss, 0)
        with torch.no_grad():
            model.encoder.weight.copy_(torch.diag(torch.tensor([1.0] * 8 + [0.1] * 8)))
            model.encoder.bias.zero_()
            model.decoder.weight.copy_(torch.eye(16))
        assert coder_statistics(model, x)["dead"] == 8
        Trainer(model, TensorRows(x), None, TrainConfig(steps=100, batch_size=64, lr=3e-2, **QUIET), loss,
                tmp_path / f"aux{aux_k}").fit()
        result[aux_k] = coder_statistics(model, x)
    assert result[0]["dead"] == 8  # nothing revives them without AuxK
    assert result[4]["dead"] <= 2 and result[4]["fvu"] < result[0]["fvu"] - 0.03
