"""BAE code files: exact round trips, the documented numpy-only reader, bad files, and the compress commands."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bitlens.analysis.compression import decode_codes, encode_packed, encode_sparse, read_codes, write_codes
from bitlens.io import BitlensError

DOC = Path(__file__).resolve().parents[1] / "docs" / "compression.md"


def random_codes(n=300, width=70, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = (rng.random((n, width)) < rng.random(width)).astype(np.uint8)
    codes[:, 0] = 1  # constant on
    codes[:, 1] = 0  # dead
    codes[:, 2] = np.arange(n) % 2  # fires for exactly half of the vectors: the rounding tie
    return codes


@pytest.mark.parametrize("encode", [encode_packed, encode_sparse])
@pytest.mark.parametrize("width", [1, 8, 70, 2304])
def test_round_trip_is_exact(encode, width):
    codes = random_codes(width=max(width, 3))[:, :width] if width >= 3 else random_codes(width=3)[:, :width]
    assert np.array_equal(decode_codes(encode(codes)), codes)


def test_sparse_stores_the_bits_that_differ_from_the_rounded_mean():
    codes = random_codes()
    data = encode_sparse(codes)
    mean = codes.mean(0)
    flips = int((codes != (mean > 0.5)).sum())
    bits = 7  # ceil(log2 70)
    assert len(data) == 32 + 9 + 4 * len(codes) + -(-flips * bits // 8)
    assert np.array_equal(decode_codes(data), codes)


def test_empty_and_bad_files(tmp_path):
    assert decode_codes(encode_sparse(np.zeros((0, 5), np.uint8))).shape == (0, 5)
    data = encode_sparse(random_codes())
    with pytest.raises(BitlensError, match="truncated"):
        decode_codes(data[:-3])
    with pytest.raises(BitlensError, match="magic"):
        decode_codes(b"X" * 40)
    with pytest.raises(BitlensError, match="only 0 and 1"):
        encode_packed(np.full((2, 3), 2))
    with pytest.raises(BitlensError, match="does not exist"):
        read_codes(tmp_path / "missing.blc")


def documented_reader() -> str:
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/compression.md has no python block"
    return block.group(1)


def test_documented_numpy_reader_works_without_bitlens(tmp_path):
    codes = random_codes(n=123, width=2304 // 8)
    for kind in ("packed", "sparse"):
        write_codes(tmp_path / f"c.{kind}.blc", codes, kind)
    script = documented_reader() + (
        "\nimport sys\n"
        "for kind in ('packed', 'sparse'):\n"
        "    np.save(sys.argv[1] + f'/{kind}.npy', read_blc(sys.argv[1] + f'/c.{kind}.blc'))\n"
        "assert not any(m.startswith('bitlens') for m in sys.modules), 'bitlens was imported'\n")
    # -I: isolated mode, so neither PYTHONPATH nor the working directory can make bitlens importable
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(tmp_path)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for kind in ("packed", "sparse"):
        assert np.array_equal(np.load(tmp_path / f"{kind}.npy"), codes)


def test_compress_and_decompress_commands_round_trip_the_bae_reconstruction(tmp_path):
    from bitlens.experiments.compress import reconstruct
    from bitlens.cli.main import main
    from bitlens.coders.bae import BAEConfig, BinaryAutoencoder
    from bitlens.coders.registry import save_coder
    from bitlens.data.store import ActivationStore

    from test_store import DIM, make_store

    store_dir = make_store(tmp_path / "store")
    torch.manual_seed(0)
    bae = BinaryAutoencoder(BAEConfig(d_in=DIM, expansion=4)).eval()
    bae.fit_input_scale(ActivationStore(store_dir).view().rows())
    save_coder(bae, tmp_path / "bae")
    out = tmp_path / "compress"
    assert main(["compress", "--coder", str(tmp_path / "bae"), "--store", str(store_dir), "--out", str(out),
                 "--val-fraction", "0.3"]) == 0
    summary = json.loads((out / "compress.json").read_text())
    assert summary["round_trip_exact"] is True
    formats = [row["format"] for row in summary["rows"]]
    assert formats[:4] == ["fp32", "fp16", "bae-packed (file)", "bae-sparse (file)"]
    for row in summary["rows"]:
        assert set(row) == {"format", "bits_per_vector", "mse", "fvu", "cosine"}
    assert summary["rows"][0]["bits_per_vector"] == 32 * DIM and summary["rows"][0]["mse"] == 0

    # the same held-out rows, encoded and decoded directly by the BAE
    _, val = ActivationStore(store_dir).split(0.3, 0, 3)
    x = val.rows(20000, seed=0)
    with torch.no_grad():
        direct = bae(x).reconstruction.numpy()
        codes = bae.encode(x).to(torch.uint8).numpy()
    assert 0 < codes.mean() < 1
    for kind in ("packed", "sparse"):
        target = tmp_path / f"{kind}.npy"
        assert main(["decompress", "--coder", str(tmp_path / "bae"), "--input", str(out / f"codes.{kind}.blc"),
                     "--out", str(target)]) == 0
        decoded = np.load(target)
        assert np.array_equal(decoded, reconstruct(bae, codes))
        np.testing.assert_allclose(decoded, direct, rtol=1e-6, atol=1e-6)
    assert main(["decompress", "--coder", str(tmp_path / "bae"), "--input", str(out / "codes.packed.blc"),
                 "--out", str(tmp_path / "codes.npy"), "--codes-only"]) == 0
    assert np.array_equal(np.load(tmp_path / "codes.npy"), codes)
    # a file from another BAE width is refused in one line
    write_codes(tmp_path / "other.blc", random_codes(width=5), "packed")
    assert main(["decompress", "--coder", str(tmp_path / "bae"), "--input", str(tmp_path / "other.blc"),
                 "--out", str(tmp_path / "x.npy")]) == 2
