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
    # the store lives in this process, as torchrun's agent hosts it (and port 0 lets the OS pick a free port)
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.spawn(fx.join, args=(2, store.port, str(out)), nprocs=2, join=True)
    del store
    flags = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return load_file(str(out / "results.safetensors")), flags, out / "run"


def two_ranks_run(two_ranks):
    """The 2-process run's folder (its checkpoint at step 20)."""
    return two_ranks[2]


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
    got = two_ranks[0]
    want = fx.first_step(None)
    for key in want:
        assert rel(got[key], want[key]) <= 1e-6, key
    assert float(want["term.entropy"]) > 0 and float(want["term.covariance"]) > 0  # the penalties are in play


def test_both_covariance_paths_are_global(two_ranks):
    got = two_ranks[0]
    want = fx.step_paths(None)
    for key in want:
        if key.endswith("grad_h"):  # rank 0's rows of the gradient
            assert rel(got[key], want[key][:fx.B // 2]) <= 1e-6, key
        else:
            assert rel(got[key], want[key]) <= 1e-6, key


def test_twenty_steps_match_one_process(two_ranks, tmp_path):
    got, flags, _ = two_ranks
    want = fx.twenty_steps(SINGLE, tmp_path / "one")
    assert all(f["weights_identical"] for f in flags)  # every rank ends with the same weights
    for key in want:
        assert rel(got[key], want[key]) <= 1e-4, (key, rel(got[key], want[key]))


def test_resume_with_any_number_of_processes(two_ranks, tmp_path):
    """A run checkpointed by 2 processes resumes in 1 (and in 2) as a 1-process run resumes in 1: the batches are
    a function of the step alone and the objective does not depend on the number of processes."""
    got = two_ranks[0]
    fx.twenty_steps(SINGLE, tmp_path / "one")
    want = fx.resumed(None, tmp_path / "one")
    two_then_one = fx.resumed(None, two_ranks_run(two_ranks))
    for key in want:
        assert rel(two_then_one[key], want[key]) <= 1e-4, key
        assert rel(got["resumed." + key], want[key]) <= 1e-4, key


def test_global_entropy_and_covariance_equal_the_concatenated_codes(two_ranks):
    got = two_ranks[0]
    codes = torch.cat([fx.codes(0.2, 11), fx.codes(0.2, 12)]).double()
    want = torch.stack([losses.minibatch_entropy(codes), losses.covariance_penalty(codes)])
    assert rel(got["global.stats"], want) <= 1e-12


def test_trainer_refuses_a_batch_the_ranks_cannot_share(tmp_path):
    from bitlens.data.sources import TensorRows
    from bitlens.io import BitlensError
    from bitlens.training.config import TrainConfig
    from bitlens.training.trainer import Trainer

    with pytest.raises(BitlensError, match="cannot be shared by 2 processes"):
        Trainer(fx.model(), TensorRows(fx.data()), None, TrainConfig(**{**fx.TRAIN, "batch_size": 63}), fx.LOSS,
                tmp_path, world=World(0, 2))


def test_torchrun_cli_trains_one_run(tmp_path):
    """`torchrun --nproc_per_node 2 -m bitlens train ...`: one run folder, written by rank 0, loadable."""
    import os
    import subprocess
    import sys

    import numpy as np

    import bitlens

    np.save(tmp_path / "x.npy", fx.data().numpy())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "bitlens", "train", "--activations", str(tmp_path / "x.npy"), "--out",
           str(tmp_path / "run"), "--steps", "10", "--batch-size", "64", "--eval-every", "10", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("trained to step 10") == 1  # rank 0 reports for both
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["distributed"] == {"world_size": 2, "batch_per_rank": 32, "sharded_data": False}
    assert bitlens.load(tmp_path / "run").width == 64


def test_bf16_encoder_keeps_the_bits_exact_and_trains(tmp_path):
    """The GPU path's precision option, run on the CPU (autocast bf16 is device-agnostic): the encoder GEMM runs in
    bf16, the bits it gives are exactly 0/1, the loss Function stays fp32 and training proceeds."""
    from bitlens.coders.step import binarize
    from bitlens.data.sources import TensorRows
    from bitlens.training.config import TrainConfig
    from bitlens.training.trainer import Trainer

    net = fx.model()
    x = fx.data()[:64] / net.input_scale
    with torch.autocast("cpu", torch.bfloat16):
        pre = net.encoder(x)
        code = binarize(pre, net.cfg.surrogate, net.cfg.tau)
    assert pre.dtype == torch.bfloat16 and set(code.unique().tolist()) <= {0.0, 1.0}
    trainer = Trainer(fx.model(), TensorRows(fx.data()), TensorRows(fx.data()[:256]),
                      TrainConfig(**{**fx.TRAIN, "precision": "bf16"}), fx.LOSS, tmp_path)
    last = trainer.fit()
    assert trainer.step == 20 and 0 < last["val/fvu"] < 1
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_a_partial_torchrun_environment_is_one_line(monkeypatch):
    from bitlens.io import BitlensError
    from bitlens.training.distributed import current_world

    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(BitlensError, match="WORLD_SIZE=2 but MASTER_ADDR, MASTER_PORT, RANK not set: launch with torchrun"):
        current_world("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert current_world("cpu") is SINGLE


def test_a_gpu_launch_with_too_few_gpus_is_one_line(monkeypatch):
    from bitlens.io import BitlensError
    from bitlens.training.distributed import current_world

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(BitlensError, match="local rank 1 needs GPU 1 but torch sees 1"):
        current_world("cuda")


def test_leaving_the_world_stops_gloo_threads(two_ranks):
    """After training (whose Adam imports torch._dynamo), leave_world stops gloo's worker threads while the
    interpreter is whole: one left running could release a tensor during shutdown and abort the process."""
    _, flags, _ = two_ranks
    assert [f["gloo_threads_left"] for f in flags] == [0, 0]


def test_rank_0_alone_with_validation_rows_calibrates_every_rank(two_ranks):
    _, flags, _ = two_ranks
    offsets = [f["offset"] for f in flags]
    assert offsets[0] == offsets[1] != 0
