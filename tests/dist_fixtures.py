"""Work done inside the processes that tests/test_distributed.py spawns (real torch.distributed on gloo).

Every function here runs in each of the ``size`` processes after ``join``; rank 0 writes the results to ``out`` as
safetensors/JSON for the test to compare against one process computing on the whole batch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from bitlens import known_entropy_data
from bitlens.coders.bae import BAEConfig
from bitlens.data.sources import TensorRows
from bitlens.training.config import LossConfig, TrainConfig
from bitlens.training.distributed import World, current_world, global_code_statistics, leave_world
from bitlens.training.fast_step import StepSpec, decoder_losses
from bitlens.training.objective import bae_objective
from bitlens.training.trainer import Trainer, init_bae

D, M, B = 16, 64, 64
#: penalties at full weight from the first step, so the first step tests every term
LOSS = LossConfig(target_fvu=0.2, entropy_start=0, entropy_ramp=0, cov_start=0, cov_ramp=0)
TRAIN = dict(steps=20, batch_size=B, lr=3e-3, eval_every=10, checkpoint_every=1000, progress=False)


def data() -> torch.Tensor:
    x, _ = known_entropy_data(2048, D, 6, seed=5)
    return x


def model():
    return init_bae(BAEConfig(d_in=D), data(), LOSS, seed=0)


def codes(density: float, seed: int) -> torch.Tensor:
    return (torch.rand(B, M, generator=torch.Generator().manual_seed(seed)) < density).float()


def first_step(world: World | None) -> dict[str, torch.Tensor]:
    """Loss terms and parameter gradients of the first step on the batch X[:B] (this rank's share of it)."""
    net = model()
    x = data()[:B]
    if world is not None:
        lo, hi = world.share(B)
        x = x[lo:hi]
    terms = bae_objective(net, x, LOSS, 1.0, 0, 20, world=world)
    terms.loss.backward()
    if world is not None:
        world.sum_gradients(net.parameters())
    out = {f"term.{k}": v.detach().reshape(1).double() for k, v in terms._asdict().items() if torch.is_tensor(v)}
    out.update({f"grad.{k}": p.grad.clone() for k, p in net.named_parameters()})
    return out


def step_paths(world: World | None) -> dict[str, torch.Tensor]:
    """The fast step's loss and gradients on fixed codes through the dense and the sparse path."""
    out = {}
    for path, density in (("dense", 0.3), ("sparse", 0.03)):
        h = codes(density, 7).requires_grad_(True)
        xn = torch.randn(B, D, generator=torch.Generator().manual_seed(8))
        w = torch.randn(D, M, generator=torch.Generator().manual_seed(9)).requires_grad_(True)
        bias = torch.zeros(D, requires_grad=True)
        lo, hi = world.share(B) if world is not None else (0, B)
        spec = StepSpec("scale_free", 2.0, 0.05, 0.01, path=path, group=world)
        loss, recon, entropy, cov = decoder_losses(h[lo:hi], xn[lo:hi], w, bias, spec)
        loss.backward()
        grad_w = world.sum(w.grad) if world is not None else w.grad
        out.update({f"{path}.loss": loss.detach().reshape(1).double(),
                    f"{path}.terms": torch.stack([recon, entropy, cov]).detach().double(),
                    f"{path}.grad_h": h.grad[lo:hi].clone(), f"{path}.grad_w": grad_w})
    return out


def twenty_steps(world: World | None, out_dir: Path) -> dict[str, torch.Tensor]:
    """Weights after 20 trainer steps (global batch B; the controller on; penalties on from step 0)."""
    rows = TensorRows(data())
    trainer = Trainer(model(), rows, None, TrainConfig(**TRAIN), LOSS, out_dir, world=world)
    trainer.fit()
    return {f"w.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}


def resumed(world: World | None, run: Path, steps: int = 30) -> dict[str, torch.Tensor]:
    """Weights after resuming ``run`` (a copy of it) with this many processes, to ``steps`` steps."""
    copy = run.with_name(run.name + f"-resumed{world.size if world else 1}")
    if world is None or world.main:
        shutil.copytree(run, copy)
    if world is not None:
        world.barrier()
    trainer = Trainer.resume(copy, TensorRows(data()), None, {"steps": steps}, world=world)
    trainer.fit()
    return {f"w.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}


def calibrated(world: World, out_dir: Path) -> float:
    """The controller's held-out offset after 10 steps with validation rows on rank 0 only (as when training from a
    model): rank 0 measures, every rank must apply the same offset (and none may wait for a collective alone)."""
    val = TensorRows(data()[:256] * 1.1) if world.main else None
    cfg = TrainConfig(**{**TRAIN, "steps": 10, "eval_every": 10})
    trainer = Trainer(model(), TensorRows(data()), val, cfg, LOSS, out_dir, world=world)
    trainer.fit()
    return trainer.controller.offset


def join(rank: int, size: int, port: int, out: str) -> None:
    """Entry point of one spawned process: join the gloo group through torchrun's variables (the store hosted by the
    test process, as torchrun's agent hosts it), compute, save."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(size), RANK=str(rank),
                      LOCAL_RANK=str(rank), TORCHELASTIC_USE_AGENT_STORE="True")
    torch.set_num_threads(1)
    world = current_world("cpu")
    results = {**first_step(world), **step_paths(world)}
    results.update(twenty_steps(world, Path(out) / "run"))
    results.update({"resumed." + k: v for k, v in resumed(world, Path(out) / "run").items()})
    offset = calibrated(world, Path(out) / "calibrated")
    # the global entropy/covariance of codes that differ by rank (each rank passes only its own rows)
    entropy, cov = global_code_statistics(codes(0.2, 11 + rank), world)
    results["global.stats"] = torch.stack([entropy, cov])
    # every rank holds the same summed gradient and weights: check it here, report to the test
    same = all(torch.equal(v, world.sum(v) / size) for k, v in results.items() if k.startswith("w."))
    if rank == 0:
        save_file({k: v.contiguous() for k, v in results.items()}, str(Path(out) / "results.safetensors"))
    leave_world()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"weights_identical": same, "offset": offset,
                                                             "gloo_threads_left": gloo_worker_threads()}))


def gloo_worker_threads() -> int:
    """Gloo's worker threads still running in this process (Linux names them pt_gloo_runloop)."""
    tasks = Path("/proc/self/task")
    return sum((t / "comm").read_text().strip() == "pt_gloo_runloop" for t in tasks.iterdir())
