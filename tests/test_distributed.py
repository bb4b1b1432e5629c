"""Data parallelism with exact global-batch statistics: 2 real processes on gloo against 1 process, whole batch."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import dist_fixtures as fx
from bitlens.training import losses
from bitlens.training.distributed import SINGLE, World, pack_bits, unpack_bits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative difference."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Results of the 2-process run (fx.join), computed once for the module."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(fx.join, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    flags = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return load_file(str(out / "results.safetensors")), flags


def test_pack_bits_round_trip():
    for m in (1, 7, 8, 13, 64):
        h = (torch.rand(5, m, generator=torch.Generator().manual_seed(m)) < 0.4).to(torch.int8)
        packed = pack_bits(h)
        assert packed.dtype == torch.uint8 and packed.shape == (5, -(-m // 8))
        assert torch.equal(unpack_bits(packed, m), h)


def test_single_world_is_a_no_op():
    h = torch.ones(3, 4, dtype=torch.int8)
    assert SINGLE.gather_bits(h) == (h, 0) and not SINGLE.active and SINGLE.main
    assert World(1, 4).share(64) == (16, 32)


def test_batch_that_cannot_be_shared_is_refused():
    from bitlens.io import BitlensError

    with pytest.raises(BitlensError, match="divisible by 3"):
        World(0, 3).check_batch(64)
    with pytest.raises(BitlensError, match="no data"):
        World(0, 4).check_batch(0)


def test_first_step_equals_one_process_with_the_whole_batch(two_ranks):
    got, _ = two_ranks
    want = fx.first_step(None)
    for key in want:
        assert rel(got[key], want[key]) <= 1e-6, key
    assert float(want["term.entropy"]) > 0 and float(want["term.covariance"]) > 0  # the penalties are in play


def test_both_covariance_paths_are_global(two_ranks):
    got, _ = two_ranks
    want = fx.step_paths(None)
    for key in want:
        if key.endswith("grad_h"):  # rank 0's rows of the gradient
            assert rel(got[key], want[key][:fx.B // 2]) <= 1e-6, key
        else:
            assert rel(got[key], want[key]) <= 1e-6, key


def test_twenty_steps_match_one_process(two_ranks, tmp_path):
    got, flags = two_ranks
    want = fx.twenty_steps(SINGLE, tmp_path / "one")
    assert all(f["weights_identical"] for f in flags)  # every rank ends with the same weights
    for key in want:
        assert rel(got[key], want[key]) <= 1e-4, (key, rel(got[key], want[key]))


def test_global_entropy_and_covariance_equal_the_concatenated_codes(two_ranks):
    got, _ = two_ranks
    codes = torch.cat([fx.codes(0.2, 11), fx.codes(0.2, 12)]).double()
    want = torch.stack([losses.minibatch_entropy(codes), losses.covariance_penalty(codes)])
    assert rel(got["global.stats"], want) <= 1e-12
