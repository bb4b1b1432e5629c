"""Time one BAE training step: a naive reference, the bitlens step, and the step's five dense GEMMs (the floor).

    python bench/train_step.py --json runs/bench/train_step.json

All three run in one process on the same inputs, interleaved round-robin (so background load hits them alike),
and the median over the timed repetitions after warm-up is reported. A "step" is the objective's forward and
backward (what the trainer runs before ``opt.step()``); the Adam update is excluded from all three.

* naive: the formulas written plainly (``torch.cov`` for the covariance, dense everything, autograd);
* bitlens: ``bae_objective(...).loss.backward()``, exactly what the trainer calls, with ``LossConfig.compile = True``
  (``--compile``: elementwise work fused by torch.compile, ``ops.fused``); its compile time (first call, from
  inductor's on-disk cache after the first run) is reported apart (``compile_s``) and not in the timings;
* eager: the same with ``compile = False`` (the default, and the fallback where compiling is unavailable);
* floor: encoder forward, decoder forward, grad w.r.t. the code, decoder weight grad, encoder weight grad as fp32
  ``torch.mm`` at the step's shapes.

Regimes: ``dense`` (PyTorch's init, about half the bits on) and ``sparse`` (encoder bias set per unit so that about
``--l0`` bits of d' are on, as in a trained coder).

``--ablate-covariance`` adds a column: the eager step with the covariance's integer product hS replaced by zeros, so
what the exact covariance costs and what everything else costs can be read apart.

``--sweep`` instead times the dense and the sparse path (both forced, compiled kernels) against the floor at a list of
densities L0/d', interleaved in one process: the data behind ``fast_step.SPARSE_MAX_DENSITY*``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from bitlens.coders.bae import BAEConfig
from bitlens.coders.step import binarize
from bitlens.ops import fused
from bitlens.training import fast_step
from bitlens.training.config import LossConfig
from bitlens.training.objective import bae_objective, term_weights
from bitlens.training.trainer import data_variance, init_bae

EPS = 1e-10


def naive_step(model, x, cfg: LossConfig, variance: float) -> torch.Tensor:
    """The objective from the formulas, dense, with autograd (no bitlens loss code)."""
    xn = x / model.input_scale
    pre = xn @ model.encoder.weight.t() + model.encoder.bias
    h = binarize(pre, model.cfg.surrogate, model.cfg.tau)
    recon = h @ model.decoder.weight.t() + model.decoder.bias
    if cfg.preset == "scale_free":
        rec = (xn - recon).pow(2).sum(-1).mean() / variance
    else:
        rec = (xn - recon).pow(2).mean()
    p = h.mean(0)
    entropy = -(p * torch.log2(p + EPS) + (1 - p) * torch.log2(1 - p + EPS)).sum()
    if cfg.entropy_threshold > 0 and entropy.item() < cfg.entropy_threshold:
        entropy = entropy.detach() * 0
    cov = torch.cov(h.t())
    penalty = cov.abs().sum() - cov.diagonal().abs().sum()
    we, wc = term_weights(cfg, model.width, 100, 100)
    loss = rec + we * entropy + wc * penalty
    loss.backward()
    return loss.detach()


def bitlens_step(model, x, cfg: LossConfig, variance: float) -> torch.Tensor:
    terms = bae_objective(model, x, cfg, variance, 100, 100)
    terms.loss.backward()
    return terms.loss.detach()


def eager_step(model, x, cfg: LossConfig, variance: float) -> torch.Tensor:
    return bitlens_step(model, x, dataclasses.replace(cfg, compile=False), variance)


def with_fast_step_attributes(step, values: dict):
    """``step`` run with these module attributes of ``fast_step`` set, restored afterwards."""
    def run(model, x, cfg, variance):
        saved = {name: getattr(fast_step, name) for name in values}
        for name, value in values.items():
            setattr(fast_step, name, value)
        try:
            return step(model, x, cfg, variance)
        finally:
            for name, value in saved.items():
                setattr(fast_step, name, value)
    return run


def forced(path: str, step=bitlens_step):
    """``step`` with the fast step's path forced (sparse or dense) whatever the density."""
    return with_fast_step_attributes(step, dict.fromkeys(fast_step.DENSITY_SWITCHES,
                                                         2.0 if path == "sparse" else -1.0))


SIGN_PRODUCTS = ("dense_sign_product", "dense_sign_product_bits", "gather_sign_product", "sparse_sign_product")


def without_covariance(step=eager_step):
    """``step`` with hS (the covariance's integer product, ``ops.fast_cov``) replaced by zeros: an ablation that
    times everything else in the step. Its losses and gradients are wrong on purpose and are never checked."""
    def zero_hs(h, *_):
        return torch.zeros(h.shape, dtype=h.dtype if h.is_floating_point() else torch.int32, device=h.device)
    return with_fast_step_attributes(step, dict.fromkeys(SIGN_PRODUCTS, zero_hs))


def auto_path(l0: float, m: int, batch: int, device_type: str) -> str:
    """The path the library picks for this density in one process (its sparse covariance route included)."""
    return fast_step.choose_path(l0 / m, device_type=device_type,
                                 gather=fast_step.gathers_covariance(device_type, m, batch))


def floor_step(t: dict[str, torch.Tensor]) -> None:
    """The five dense GEMMs of a step at its shapes (fp32)."""
    torch.mm(t["xn"], t["w_in_t"])  # encoder forward      [B, d] x [d, m]
    torch.mm(t["h"], t["w_out_t"])  # decoder forward      [B, m] x [m, d]
    torch.mm(t["g_err"], t["w_out"])  # dL/dh              [B, d] x [d, m]
    torch.mm(t["g_err_t"], t["h"])  # decoder weight grad  [d, B] x [B, m]
    torch.mm(t["dpre_t"], t["xn"])  # encoder weight grad  [m, B] x [B, d]


def make_case(d: int, batch: int, regime: str, l0: int, seed: int):
    torch.manual_seed(seed)
    x = torch.randn(batch, d)
    cfg = LossConfig(compile=True)
    # dense: PyTorch's init (about half of the bits on); sparse: the sparse start, biases set below
    model = init_bae(BAEConfig(d_in=d, init="torch" if regime == "dense" else "sparse"), x, cfg, seed)
    if regime == "sparse":  # per-unit bias at the (1 - l0/m) quantile of a fresh sample's pre-activations
        with torch.no_grad():
            ref = torch.randn(4096, d) / model.input_scale @ model.encoder.weight.t()
            model.encoder.bias.copy_(-torch.quantile(ref, 1 - l0 / model.width, dim=0))
    variance = data_variance(model, x)
    return model, x, cfg, variance


def grads_of(step, model, x, cfg, variance):
    model.zero_grad(set_to_none=True)
    loss = step(model, x, cfg, variance)
    return loss, {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _timings(runners: dict, warmup: int, repeat: int, sync) -> dict[str, float]:
    """Median ms of each runner, interleaved round-robin."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for rep in range(warmup + repeat):
        for name, fn in runners.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if rep >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _setup(d, batch, regime, l0_target, seed, device):
    model, x, cfg, variance = make_case(d, batch, regime, l0_target, seed)
    model, x = model.to(device), x.to(device)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    m = model.width
    with torch.no_grad():
        xn = x / model.input_scale
        h = (model.encoder(xn) > 0).float()
    l0 = float(h.sum(1).mean())
    gen = torch.Generator().manual_seed(seed)
    tensors = {"xn": xn, "w_in_t": model.encoder.weight.detach().t().contiguous(), "h": h,
               "w_out_t": model.decoder.weight.detach().t().contiguous(), "w_out": model.decoder.weight.detach(),
               "g_err": torch.randn(batch, d, generator=gen), "g_err_t": torch.randn(d, batch, generator=gen),
               "dpre_t": torch.randn(m, batch, generator=gen)}
    tensors = {k: v.to(device) for k, v in tensors.items()}
    return model, x, cfg, variance, sync, l0, tensors


def _first_call_compile_s(step, model, x, cfg, variance) -> float:
    """Compile time of the compiled kernels this step uses (their first calls; 0 if already compiled)."""
    before = fused.compile_seconds
    model.zero_grad(set_to_none=True)
    step(model, x, cfg, variance)
    return fused.compile_seconds - before


def run_case(d: int, batch: int, regime: str, l0_target: int, warmup: int, repeat: int, seed: int,
             device: str = "cpu", naive: bool = True, ablate_covariance: bool = False) -> dict:
    model, x, cfg, variance, sync, l0, tensors = _setup(d, batch, regime, l0_target, seed, device)
    m = model.width
    compile_s = _first_call_compile_s(bitlens_step, model, x, cfg, variance)

    def timed(step):
        model.zero_grad(set_to_none=True)
        step(model, x, cfg, variance)

    runners = {"naive": lambda: timed(naive_step)} if naive else {}
    runners.update({"bitlens": lambda: timed(bitlens_step), "eager": lambda: timed(eager_step),
                    "floor": lambda: floor_step(tensors)})
    if ablate_covariance:
        no_cov = without_covariance()
        runners["no_cov"] = lambda: timed(no_cov)
    ms = _timings(runners, warmup, repeat, sync)

    ref_loss, ref_grads = grads_of(naive_step, model, x, cfg, variance)
    errs = {}
    for name, step in (("bitlens", bitlens_step), ("eager", eager_step)):
        fast_loss, fast_grads = grads_of(step, model, x, cfg, variance)
        errs[name] = (float((fast_loss - ref_loss).abs() / ref_loss.abs().clamp_min(1e-30)),
                      max(float((fast_grads[k] - g).norm() / g.norm().clamp_min(1e-30)) for k, g in ref_grads.items()))
    row = {"d": d, "d_prime": m, "batch": batch, "regime": regime, "l0": round(l0, 1),
           "path": auto_path(l0, m, batch, x.device.type),
           "bitlens_ms": round(ms["bitlens"], 2), "eager_ms": round(ms["eager"], 2), "floor_ms": round(ms["floor"], 2),
           "ratio_to_floor": round(ms["bitlens"] / ms["floor"], 3),
           "eager_ratio_to_floor": round(ms["eager"] / ms["floor"], 3),
           "compile_s": round(compile_s, 2),
           "max_rel_err_loss": errs["bitlens"][0], "max_rel_err_grad": errs["bitlens"][1],
           "eager_rel_err_loss": errs["eager"][0], "eager_rel_err_grad": errs["eager"][1]}
    if ablate_covariance:
        row.update({"eager_no_cov_ms": round(ms["no_cov"], 2),
                    "eager_no_cov_ratio_to_floor": round(ms["no_cov"] / ms["floor"], 3)})
    if naive:
        row.update({"naive_ms": round(ms["naive"], 2), "naive_ratio_to_floor": round(ms["naive"] / ms["floor"], 3),
                    "speedup_vs_naive": round(ms["naive"] / ms["bitlens"], 2)})
    return row


def sweep_case(d: int, batch: int, l0_target: float, warmup: int, repeat: int, seed: int, device: str = "cpu") -> dict:
    """Dense path vs sparse path (both compiled) vs the floor at one density, interleaved."""
    model, x, cfg, variance, sync, l0, tensors = _setup(d, batch, "sparse", l0_target, seed, device)
    m = model.width
    dense, sparse = forced("dense"), forced("sparse")
    for step in (dense, sparse):
        _first_call_compile_s(step, model, x, cfg, variance)

    def timed(step):
        model.zero_grad(set_to_none=True)
        step(model, x, cfg, variance)

    ms = _timings({"dense": lambda: timed(dense), "sparse": lambda: timed(sparse), "floor": lambda: floor_step(tensors)},
                  warmup, repeat, sync)
    return {"d": d, "d_prime": m, "batch": batch, "l0": round(l0, 1), "density": round(l0 / m, 5),
            "dense_ms": round(ms["dense"], 2), "sparse_ms": round(ms["sparse"], 2), "floor_ms": round(ms["floor"], 2),
            "dense_ratio": round(ms["dense"] / ms["floor"], 3), "sparse_ratio": round(ms["sparse"] / ms["floor"], 3),
            "auto_path": auto_path(l0, m, batch, x.device.type)}


def machine() -> dict:
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                   .stdout.splitlines() if ln.startswith("Model name"))
    except Exception:  # noqa: BLE001 - informative only
        cpu = platform.processor()
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--sizes", default="576,2048", help="comma-separated hidden sizes d (d' = 4d)")
    ap.add_argument("--regimes", default="dense,sparse")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force-path", choices=["dense", "sparse"], help="ablation: one path whatever the density")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive column (slow at d = 2048)")
    ap.add_argument("--ablate-covariance", action="store_true",
                    help="add a column: the eager step with the covariance's hS replaced by zeros (wrong losses, "
                    "not checked), i.e. what everything but the exact covariance costs")
    ap.add_argument("--sweep", default="", help="densities L0/d' (comma-separated, e.g. 0.005,0.01,0.02): time "
                    "the dense and the sparse path at each instead of the regime table")
    ap.add_argument("--gather-max-width", type=int, default=-1,
                    help="where int8 GEMMs are fast (AVX-512 CPUs): the widest code d' whose sparse covariance comes "
                    "from gathers rather than row overlaps (-1 = the library's GATHER_MAX_WIDTH_INT8_CPU; 0 = overlaps "
                    "always, 1000000 = gathers always); to calibrate it")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (issue 16: the GPU path; fp32 throughout)")
    args = ap.parse_args()
    if args.force_path:
        fast_step.SPARSE_MAX_DENSITY = fast_step.SPARSE_MAX_DENSITY_FP32 = fast_step.SPARSE_MAX_DENSITY_ROWS_FP32 = \
            2.0 if args.force_path == "sparse" else -1.0
    if args.gather_max_width >= 0:
        fast_step.GATHER_MAX_WIDTH_INT8_CPU = args.gather_max_width
    if args.threads:
        torch.set_num_threads(args.threads)
    l0_for = {576: 32, 2048: 64}
    info = machine()
    info["int8_gemm_fast"] = fast_step.int8_gemm_is_fast(args.device.split(":")[0])
    info["gather_max_width_int8_cpu"] = fast_step.GATHER_MAX_WIDTH_INT8_CPU
    if args.device != "cpu":
        info["device"] = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") \
            else args.device
    print(f"# {info.get('device', info['cpu'])}, {info['threads']} threads, torch {info['torch']}, batch {args.batch}, fp32, "
          f"median of {args.repeat} after {args.warmup} warm-up; forward+backward, Adam excluded")
    rows = []
    if args.sweep:
        print(f"{'d':>5} {'d_prime':>7} {'l0':>7} {'density':>8} {'dense_ms':>9} {'sparse_ms':>9} {'floor_ms':>9} "
              f"{'dense/fl':>8} {'sparse/fl':>9} {'auto':>6}")
        for d in (int(s) for s in args.sizes.split(",")):
            for dens in (float(s) for s in args.sweep.split(",")):
                m = 4 * d
                r = sweep_case(d, args.batch, max(dens * m, 0.5), args.warmup, args.repeat, args.seed, args.device)
                rows.append(r)
                print(f"{r['d']:>5} {r['d_prime']:>7} {r['l0']:>7} {r['density']:>8.4f} {r['dense_ms']:>9.1f} "
                      f"{r['sparse_ms']:>9.1f} {r['floor_ms']:>9.1f} {r['dense_ratio']:>8.2f} {r['sparse_ratio']:>9.2f} "
                      f"{r['auto_path']:>6}", flush=True)
    else:
        print(f"{'d':>5} {'d_prime':>7} {'regime':>6} {'l0':>7} {'path':>6} {'naive_ms':>9} {'bitlens_ms':>10} "
              f"{'eager_ms':>9} {'floor_ms':>9} {'ratio':>6} {'eager':>6} {'compile_s':>9} {'err_loss':>9} "
              f"{'err_grad':>9}")
        for d in (int(s) for s in args.sizes.split(",")):
            for regime in args.regimes.split(","):
                r = run_case(d, args.batch, regime, l0_for.get(d, max(1, d // 32)), args.warmup, args.repeat,
                             args.seed, args.device, naive=not args.no_naive,
                             ablate_covariance=args.ablate_covariance)
                rows.append(r)
                print(f"{r['d']:>5} {r['d_prime']:>7} {regime:>6} {r['l0']:>7} {r['path']:>6} "
                      f"{r.get('naive_ms', float('nan')):>9.1f} {r['bitlens_ms']:>10.1f} {r['eager_ms']:>9.1f} "
                      f"{r['floor_ms']:>9.1f} {r['ratio_to_floor']:>6.2f} {r['eager_ratio_to_floor']:>6.2f} "
                      f"{r['compile_s']:>9.2f} {r['max_rel_err_loss']:>9.1e} {r['max_rel_err_grad']:>9.1e}"
                      + (f"  no_cov {r['eager_no_cov_ms']:.1f} ms = {r['eager_no_cov_ratio_to_floor']:.2f} x floor"
                         if args.ablate_covariance else ""), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
