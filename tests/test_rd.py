"""Issue 12: `bitlens entropy rd` (Gaussian reverse water-filling, the knee, the bootstrap, the runner)."""

import json
import math

import numpy as np
import pytest
import torch

from bitlens.cli.main import main
from bitlens.data.synthetic import bernoulli_bits, planted_code
from bitlens.analysis.entropy import bootstrap_bits
from bitlens.experiments.rd import RDConfig, _fit_target, covariance_eigenvalues, find_knee, gaussian_rate


def test_gaussian_rate_is_reverse_water_filling():
    assert gaussian_rate([1.0] * 8, 0.25) == pytest.approx(8 * 0.5 * math.log2(4))  # isotropic: d/2 log2(1/FVU)
    assert gaussian_rate([1.0] * 8, 1.0) == 0 and gaussian_rate([1.0] * 8, 0.0) == math.inf
    # eigenvalues 4 and 1, D = 1.5 of 5: the water level theta = 0.75 stays under both -> 1/2 log2(4/.75 * 1/.75)
    assert gaussian_rate([4.0, 1.0], 0.3) == pytest.approx(0.5 * math.log2(4 / 0.75) + 0.5 * math.log2(1 / 0.75))
    # D = 3 of 5: theta = 2 drowns the small eigenvalue, only the large one is coded
    assert gaussian_rate([4.0, 1.0], 0.6) == pytest.approx(0.5 * math.log2(4 / 2))
    eig = covariance_eigenvalues(torch.randn(20000, 4, generator=torch.Generator().manual_seed(0)) * 2)
    assert eig == pytest.approx([4, 4, 4, 4], rel=0.05)


def test_knee_is_where_bits_stop_buying_fvu():
    fvu = [0.01, 0.015, 0.02, 0.1, 0.2, 0.3]
    bits = [100, 40, 12.5, 11, 9.5, 8]
    knee = find_knee(fvu, bits)
    assert knee.bits == 12.5 and knee.fvu == 0.02 and knee.index == 2
    assert find_knee(fvu[::-1], bits[::-1]).bits == 12.5  # order does not matter
    assert find_knee([0.1, 0.2, 0.3], [3, 2, 1]) is None  # straight: no knee
    assert find_knee([0.1, 0.2], [3, 1]) is None


def test_bootstrap_interval_brackets_the_estimate():
    codes = (torch.rand(4000, 50, generator=torch.Generator().manual_seed(1)) < torch.linspace(0.01, 0.5, 50)).to(
        torch.uint8)
    point = float(bernoulli_bits(codes.double().mean(0)).sum())
    lo, hi = bootstrap_bits(codes, 200)
    assert lo < point < hi and hi - lo < 1.5


def test_rd_cli_writes_the_curve(tmp_path, capsys):
    code = planted_code("nonuniform", 3000, 16, 6, seed=0)
    np.save(tmp_path / "x.npy", code.x.numpy())
    out = tmp_path / "rd"
    args = ["entropy", "rd", "--activations", str(tmp_path / "x.npy"), "--targets", "0.05", "0.2", "0.5",
            "--seeds", "2", "--steps", "60", "--batch-size", "256", "--bootstrap", "50", "--out", str(out)]
    assert main(args) == 0
    rd = json.loads((out / "rd.json").read_text())
    assert [p["target_fvu"] for p in rd["points"]] == [0.05, 0.2, 0.5]
    for p in rd["points"]:
        for key in ("fvu", "entropy_bits", "entropy_bits_std", "dead", "constant_on", "ratio_to_gaussian"):
            assert p[key] is not None, key
        assert len(p["runs"]) == 2 and all(len(r["entropy_bits_ci95"]) == 2 for r in p["runs"])
        assert p["ratio_to_gaussian"] == pytest.approx(p["entropy_bits"] / p["gaussian_bits"])
        assert p["target_reached"] == (p["max_abs_fvu_error"] <= 0.01 or all(r["fvu"] < p["target_fvu"]
                                                                              for r in p["runs"]))
        assert p["code_full"] == (p["entropy_bits"] >= 0.95 * rd["d_prime"])
    assert "knee_bits" in rd and len(rd["gaussian_rd"]["fvu"]) == len(rd["gaussian_rd"]["bits"])
    assert (out / "rd.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out
    # finished runs are read back, not retrained
    before = (out / "fvu_0.050" / "seed_0" / "result.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "fvu_0.050" / "seed_0" / "result.json").stat().st_mtime_ns == before
    assert main(["entropy", "rd", "--out", str(tmp_path / "none")]) == 2


def test_a_full_code_that_misses_its_target_is_trained_again_wider():
    d = 16

    def runs_like(full_below: int):
        """Runs that end full (99% of d' in bits) and at FVU 0.2 below ``full_below``-d width, at the target above."""
        calls = []

        def fit_seed(target, seed, expansion):
            calls.append((seed, expansion))
            if expansion < full_below:
                return {"fvu": 0.2, "entropy_bits": 0.99 * expansion * d}
            return {"fvu": target + 0.001, "entropy_bits": 20.0 + seed}
        return calls, fit_seed

    quiet = lambda *_: None  # noqa: E731
    calls, fit = runs_like(4)
    runs, expansion, narrower = _fit_target(RDConfig(seeds=3, expansion=1, max_expansion=8), 0.05, fit, d, quiet)
    # the first full seed at each width sends the target on; every seed then runs at the width that reaches it
    assert calls == [(0, 1), (0, 2), (0, 4), (1, 4), (2, 4)] and expansion == 4
    assert [r["entropy_bits"] for r in runs] == [20.0, 21.0, 22.0]
    assert [(a["expansion"], a["d_prime"], a["seeds_run"]) for a in narrower] == [(1, 16, 1), (2, 32, 1)]
    # capped by --max-expansion: the widest allowed code keeps the target, missed, with all its seeds
    calls, fit = runs_like(4)
    runs, expansion, narrower = _fit_target(RDConfig(seeds=2, expansion=1, max_expansion=2), 0.05, fit, d, quiet)
    assert calls == [(0, 1), (0, 2), (1, 2)] and expansion == 2 and len(narrower) == 1
    # --no-widen, or a code that is not full (the states, not the width, stop it), stays at its width
    calls, fit = runs_like(4)
    assert _fit_target(RDConfig(seeds=2, expansion=1, widen=False), 0.05, fit, d, quiet)[1:] == (1, [])
    calls, fit = runs_like(1)
    assert _fit_target(RDConfig(seeds=2, expansion=1), 0.05, fit, d, quiet)[1:] == (1, [])
    short_not_full = lambda target, seed, expansion: {"fvu": 0.2, "entropy_bits": 0.5 * expansion * d}  # noqa: E731
    assert _fit_target(RDConfig(seeds=2, expansion=1), 0.05, short_not_full, d, quiet)[1:] == (1, [])
    with pytest.raises(ValueError):
        RDConfig(expansion=8, max_expansion=4)
