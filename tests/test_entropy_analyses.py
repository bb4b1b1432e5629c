"""`bitlens entropy layers|positions` on a small two-layer store: outputs, resume, bad input."""

import json

import numpy as np
import pytest

from bitlens.cli.main import main
from bitlens.data.store import StoreWriter

DIM, T, DOCS = 8, 12, 60


def position_store(path):
    """Layers 0, 1, 2; DOCS documents of one input each with positions 1..T. At position t the state carries
    min(t, 5) random bits along fixed directions (layer 2 twice as many directions as layer 1)."""
    writer = StoreWriter.open(path, settings={"test": "positions"}, layers=[0, 1, 2], dim=DIM, dtype="float32",
                              shard_rows=300, documents=lambda: [{"index": i, "id": f"d{i}"} for i in range(DOCS)],
                              token_texts=lambda: [f"t{i}" for i in range(20)])
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(10, DIM))
    for doc in range(DOCS):
        positions = np.arange(1, T + 1)
        acts = {}
        for layer in (0, 1, 2):
            bits = np.zeros((T, 10))
            for i, t in enumerate(positions):
                k = min(t, 5) * (2 if layer == 2 else 1)
                bits[i, :k] = rng.integers(0, 2, k)
            acts[layer] = (bits @ directions + 0.01 * rng.normal(size=(T, DIM))).astype(np.float32)
        meta = np.stack([np.full(T, doc), np.zeros(T), np.zeros(T), positions, positions % 20], 1).astype(np.int32)
        writer.add(acts, meta, cursor=(doc, 1), excluded={"special": 0, "first": 1}, sequences=1)
    writer.finish()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return position_store(tmp_path_factory.mktemp("pos") / "store")


FAST = ["--steps", "20", "--batch-size", "64", "--no-progress"]


def test_layers_writes_json_and_plot_and_resumes(store, tmp_path):
    out = tmp_path / "layers"
    assert main(["entropy", "layers", "--store", str(store), "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "layers.json").read_text())
    rows = summary["layers"]
    assert [r["layer"] for r in rows] == [1, 2]  # layer 0 (embeddings) is left out by default
    for r in rows:
        for key in ("layer", "entropy_bits", "entropy_bits_corrected", "fvu", "l0", "joint_bits_corrected"):
            assert key in r
        assert r["entropy_bits_corrected"] >= r["entropy_bits"] >= 0
        lo, hi = r["entropy_bits_ci95"]  # every reported estimate carries its bootstrap interval
        assert lo <= r["entropy_bits"] <= hi
    assert (out / "layers.png").stat().st_size > 0 and (out / "manifest.json").is_file()
    # a second run reads the finished layers instead of retraining them
    result = out / "layer_01" / "result.json"
    before = result.stat().st_mtime_ns
    assert main(["entropy", "layers", "--store", str(store), "--out", str(out), "--layers", "0", "1", *FAST]) == 0
    assert result.stat().st_mtime_ns == before
    assert [r["layer"] for r in json.loads((out / "layers.json").read_text())["layers"]] == [0, 1]


def test_layers_resumes_an_interrupted_layer(store, tmp_path):
    from bitlens.experiments.layers import LayersConfig, run_layers
    from bitlens.coders.bae import BAEConfig
    from bitlens.data.store import ActivationStore
    from bitlens.training.config import TrainConfig, llm_loss
    from bitlens.training.trainer import Trainer, init_bae, read_metrics

    out = tmp_path / "layers"
    # a layer whose training stopped half-way: a checkpoint at step 10 of 20, no result yet
    train, val = ActivationStore(store).split(0.1, 0, 1)
    model = init_bae(BAEConfig(d_in=DIM), train.rows(65536), llm_loss(), 0)
    trainer = Trainer(model, train, val, TrainConfig(steps=20, batch_size=64, progress=False, eval_every=10,
                                                     checkpoint_every=10, eval_tokens=16384), llm_loss(),
                      out / "layer_01")
    trainer.fit(until=10)
    run_layers(LayersConfig(store=str(store), out=str(out), layers=[1], steps=20, batch_size=64, progress=False))
    assert [m["step"] for m in read_metrics(out / "layer_01")] == [10, 20]  # continued, not restarted
    assert json.loads((out / "layer_01" / "result.json").read_text())["steps"] == 20


@pytest.mark.parametrize("mode", ["per_position", "shared"])
def test_positions_curve_and_saturation(store, tmp_path, mode):
    out = tmp_path / mode
    assert main(["entropy", "positions", "--store", str(store), "--out", str(out), "--layers", "1", "2",
                 "--positions", "1,2,3,5,8,12", "--mode", mode, "--min-tokens-per-position", "40", "--shared-steps", "20",
                 *FAST]) == 0
    summary = json.loads((out / "positions.json").read_text())
    assert summary["rows_per_position"] == DOCS and summary["mode"] == mode
    for entry in summary["layers"]:
        assert [p["position"] for p in entry["positions"]] == [1, 2, 3, 5, 8, 12]
        assert all(p["entropy_bits"] >= 0 for p in entry["positions"])
        assert "saturation_position" in entry and entry["plateau_bits"] >= 0
    assert (out / "positions.png").stat().st_size > 0


def test_positions_refuses_a_store_without_enough_rows(store, tmp_path):
    assert main(["entropy", "positions", "--store", str(store), "--out", str(tmp_path / "p"),
                 "--positions", "1,2", "--min-tokens-per-position", "1000", "--max-tokens-per-position", "1000", *FAST]) == 2
    assert main(["entropy", "positions", "--store", str(store), "--out", str(tmp_path / "p"),
                 "--positions", "a,b", *FAST]) == 2
    assert main(["entropy", "layers", "--store", str(tmp_path / "nothing"), "--out", str(tmp_path / "l")]) == 2
    assert main(["entropy", "layers", "--store", str(store), "--layers", "7", "--out", str(tmp_path / "l")]) == 2
