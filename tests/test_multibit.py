"""Multi-bit decoding (ours): k = 1 is today's BAE bit for bit; k > 1 levels, entropy, training, files."""

import json

import numpy as np
import pytest
import torch

from bitlens import known_entropy_data
from bitlens.analysis.compression import read_codes, write_codes
from bitlens.analysis.level_codes import code_file_bits, read_any_codes, write_any_codes
from bitlens.analysis.entropy import categorical_entropy_bits
from bitlens.analysis.statistics import coder_statistics
from bitlens.cli.main import main
from bitlens.io import BitlensError
from bitlens.coders.bae import BAEConfig, BinaryAutoencoder
from bitlens.coders.multibit import MultiBitAutoencoder, MultiBitConfig, dequantize, thresholds
from bitlens.coders.registry import load, save_coder
from bitlens.training.config import LossConfig
from bitlens.training.multibit_objective import level_entropy, multibit_objective
from bitlens.training.objective import reference_objective


def pair(surrogate="sigmoid", bits=1, d=12, m=40, seed=0):
    torch.manual_seed(seed)
    bae = BinaryAutoencoder(BAEConfig(d_in=d, d_code=m, surrogate=surrogate))
    multi = MultiBitAutoencoder(MultiBitConfig(d_in=d, d_code=m, surrogate=surrogate, bits_per_unit=bits))
    multi.load_state_dict(bae.state_dict())
    with torch.no_grad():
        bae.input_scale.fill_(1.7)
        multi.input_scale.fill_(1.7)
    return bae, multi


@pytest.mark.parametrize("surrogate", ["identity", "sigmoid", "official", "paper"])
@pytest.mark.parametrize("preset", ["scale_free", "paper"])
def test_one_bit_per_unit_is_the_bae_bit_for_bit(surrogate, preset):
    bae, multi = pair(surrogate)
    x = torch.randn(64, 12) * 3
    cfg = LossConfig(preset=preset, target_fvu=0.0, entropy_weight=0.5, cov_weight=2.0, warmup_fraction=0.0,
                     entropy_ramp=0, cov_ramp=0)
    a = reference_objective(bae, x, cfg, 7.5, 10, 100)
    b = multibit_objective(multi, x, cfg, 7.5, 10, 100)
    for name in ("loss", "recon", "entropy", "covariance"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(bae.named_parameters(), multi.parameters()):
        assert torch.equal(p.grad, q.grad), name
    with torch.no_grad():
        assert torch.equal(bae.encode(x), multi.encode(x)) and torch.equal(bae(x).reconstruction, multi(x).reconstruction)
        assert torch.equal(multi.encode_levels(x).float(), bae.encode(x))


def test_train_with_one_bit_per_unit_is_todays_training(tmp_path):
    x, _ = known_entropy_data(512, 16, 6, seed=2)
    np.save(tmp_path / "x.npy", x.numpy())
    common = ["train", "--activations", str(tmp_path / "x.npy"), "--steps", "6", "--batch-size", "128",
              "--no-progress", "--eval-every", "3"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--bits-per-unit", "1"]) == 0
    for name in ("checkpoint/model.safetensors", "checkpoint/optimizer.safetensors", "checkpoint/cfg.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a/metrics.jsonl").read_text() == (tmp_path / "b/metrics.jsonl").read_text()


def test_levels_thresholds_and_dequantised_values():
    assert thresholds(1, 1.0) == [0.0] and thresholds(2, 1.0) == [0.0, 0.5, 1.0]
    assert len(thresholds(4, 2.0)) == 15 and thresholds(4, 2.0)[-1] == 2.0
    _, multi = pair(bits=2)
    pre = torch.tensor([[-0.3, 0.0, 0.2, 0.5, 0.7, 1.0, 3.0]])
    steps = multi.steps(pre)
    assert torch.equal(dequantize(steps), torch.tensor([[0, 0, 1, 1, 2, 2, 3]]) / 3.0)
    with torch.no_grad():
        multi.encoder.weight.copy_(torch.eye(12, 40).t())
        multi.encoder.bias.zero_()
        multi.input_scale.fill_(1.0)
    x = torch.zeros(1, 12)
    x[0, :7] = pre[0]
    assert multi.encode_levels(x)[0, :7].tolist() == [0, 0, 1, 1, 2, 2, 3]


def test_level_entropy_is_the_categorical_entropy_and_has_gradients():
    torch.manual_seed(1)
    pre = (torch.randn(256, 9) * 0.8).requires_grad_()
    _, multi = pair(surrogate="sigmoid", bits=2, m=9)
    steps = multi.steps(pre)
    h = level_entropy(steps)
    levels = sum((pre.detach() - t > 0).long() for t in thresholds(2, 1.0))
    hist = np.stack([(levels == v).double().mean(0).numpy() for v in range(4)], -1)
    assert h.item() == pytest.approx(categorical_entropy_bits(hist).sum(), rel=1e-5)
    h.backward()
    assert pre.grad.abs().sum() > 0
    # the surrogate of the staircase is the sum of the thresholds' surrogates, over L - 1
    pre2 = torch.tensor([0.1, 0.6, -0.2], requires_grad=True)
    dequantize(multi.steps(pre2)).sum().backward()
    sig = lambda z: torch.sigmoid(z / 0.3) * (1 - torch.sigmoid(z / 0.3)) / 0.3  # noqa: E731
    expected = sum(sig(pre2.detach() - t) for t in thresholds(2, 1.0)) / 3
    assert torch.allclose(pre2.grad, expected, atol=1e-6)


def test_statistics_report_level_entropy():
    _, multi = pair(bits=2)
    x = torch.randn(500, 12) * 2
    stats = coder_statistics(multi, x)
    levels = multi.encode_levels(x).numpy()
    hist = np.stack([(levels == v).mean(0) for v in range(4)], -1)
    assert stats["entropy_bits"] == pytest.approx(categorical_entropy_bits(hist).sum(), rel=1e-9)
    assert stats["bits_per_unit"] == 2 and stats["entropy_bits_on_off"] <= stats["entropy_bits"] + 1e-9


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("kind", ["packed", "sparse"])
def test_level_files_round_trip_and_state_k(tmp_path, bits, kind):
    rng = np.random.default_rng(bits)
    levels = rng.integers(0, 1 << bits, size=(37, 21)).astype(np.uint8)
    levels[:, :5] = 0  # mostly-reference columns
    path = tmp_path / f"c.{kind}.blc"
    write_any_codes(path, levels, kind, bits)
    assert code_file_bits(path) == bits and np.array_equal(read_any_codes(path)[0], levels)
    (tmp_path / "bad.blc").write_bytes(path.read_bytes()[:-1] if kind == "packed" else path.read_bytes()[:40])
    with pytest.raises(BitlensError, match="truncated"):
        read_any_codes(tmp_path / "bad.blc")
    with pytest.raises(BitlensError, match="level_codes"):  # the 1-bit reader refuses a level file in one line
        read_codes(path)


def test_train_load_compress_decompress_with_two_bits(tmp_path):
    from test_store import make_store

    store = make_store(tmp_path / "store")
    run = tmp_path / "mb"
    assert main(["train", "--store", str(store), "--steps", "15", "--batch-size", "64", "--no-progress",
                 "--bits-per-unit", "2", "--out", str(run), "--eval-every", "15"]) == 0
    model = load(run)
    assert isinstance(model, MultiBitAutoencoder) and model.bits_per_unit == 2
    meta = json.loads((run / "checkpoint/cfg.json").read_text())
    assert meta["architecture"] == "multibit_bae" and meta["config"]["bits_per_unit"] == 2
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["bits_per_unit"] == 2 and final["entropy_bits"] >= final["entropy_bits_on_off"] - 1e-9
    out = tmp_path / "cmp"
    assert main(["compress", "--coder", str(run), "--store", str(store), "--out", str(out),
                 "--val-fraction", "0.3"]) == 0
    summary = json.loads((out / "compress.json").read_text())
    assert summary["round_trip_exact"] and summary["bits_per_unit"] == 2
    assert code_file_bits(out / "codes.sparse.blc") == 2
    from bitlens.data.store import ActivationStore

    _, val = ActivationStore(store).split(0.3, 0, 3)
    x = val.rows(20000, seed=0)
    with torch.no_grad():
        direct = model(x).reconstruction.numpy()
    assert main(["decompress", "--coder", str(run), "--input", str(out / "codes.sparse.blc"),
                 "--out", str(tmp_path / "x.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), direct, rtol=1e-5, atol=1e-5)
    assert main(["decompress", "--coder", str(run), "--input", str(out / "codes.packed.blc"),
                 "--out", str(tmp_path / "lv.npy"), "--codes-only"]) == 0
    assert np.array_equal(np.load(tmp_path / "lv.npy"), model.encode_levels(x).numpy())
    # a 1-bit file is refused by a 2-bit coder, in one line
    write_codes(tmp_path / "one.blc", np.zeros((3, model.width), np.uint8), "packed")
    assert main(["decompress", "--coder", str(run), "--input", str(tmp_path / "one.blc"),
                 "--out", str(tmp_path / "y.npy")]) == 2
    # saving and loading keeps every weight
    save_coder(model, tmp_path / "again")
    again = load(tmp_path / "again")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_sparse_start_spreads_firing_rows_over_the_levels():
    from bitlens.training.trainer import init_bae

    torch.manual_seed(0)
    x = torch.randn(4000, 16) * 3
    model = init_bae(MultiBitConfig(d_in=16, d_code=24, bits_per_unit=3), x, LossConfig(), 0, "multibit_bae")
    levels = model.encode_levels(x)
    fires = (levels > 0).float().mean(0)
    assert torch.allclose(fires, torch.full_like(fires, 0.03), atol=0.01)  # the BAE's start: 3% of rows
    top = (levels == 7).float().mean(0)
    assert torch.allclose(top, torch.full_like(top, 0.003), atol=0.002)  # top level on a tenth of them
    assert len(torch.unique(levels[levels > 0])) == 7  # the firing rows use every level
