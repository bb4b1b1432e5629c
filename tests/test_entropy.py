import math

import numpy as np
import pytest

from bitlens.analysis.entropy import batch_mean_entropy, bernoulli_entropy_bits, estimate_entropy


def test_independent_fair_bits():
    rng = np.random.default_rng(0)
    n, r = 200_000, 6
    codes = np.concatenate([rng.integers(0, 2, (n, r)), np.zeros((n, 10)), np.ones((n, 3))], 1)
    est = estimate_entropy(codes)
    assert abs(est.marginal_bits - r) < 1e-3
    assert est.joint_reliable and abs(est.joint_bits - r) < 1e-2
    assert abs(est.total_correlation_bits) < 0.01
    assert est.active_units == r and est.warning() is None


def test_duplicated_bits_show_total_correlation():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, (100_000, 4))
    codes = np.concatenate([base, base[:, :2], 1 - base[:, 2:3]], 1)  # 3 redundant copies
    est = estimate_entropy(codes)
    assert abs(est.marginal_bits - 7) < 0.01
    assert abs(est.joint_bits - 4) < 0.01
    assert abs(est.total_correlation_bits - 3) < 0.02
    assert "not independent" in est.warning()


def test_miller_madow_correction_reduces_bias():
    # biased bits p = 0.1, small samples: the plug-in is biased low; Miller-Madow removes most of it on average
    rng = np.random.default_rng(2)
    p, n, m = 0.1, 30, 2000
    truth = m * float(bernoulli_entropy_bits(np.array([p]))[0])
    plug, mm = [], []
    for _ in range(20):
        est = estimate_entropy(rng.random((n, m)) < p)
        plug.append(est.marginal_bits)
        mm.append(est.marginal_bits_corrected)
    bias_plug, bias_mm = np.mean(plug) - truth, np.mean(mm) - truth
    assert bias_plug < 0
    assert abs(bias_mm) < abs(bias_plug) / 3
    # exact size of the correction: 1/(2 n ln 2) bits per non-constant unit
    est = estimate_entropy(np.array([[0, 1], [1, 1], [0, 1]]))
    assert est.marginal_bits_corrected - est.marginal_bits == pytest.approx(1 / (2 * 3 * math.log(2)))


def test_joint_unreliable_when_undersampled():
    rng = np.random.default_rng(3)
    est = estimate_entropy(rng.integers(0, 2, (500, 30)))
    assert not est.joint_reliable
    assert est.joint_bits <= math.log2(500) + 1e-9


def test_batch_mean_is_biased_low():
    rng = np.random.default_rng(4)
    codes = rng.random((4096, 50)) < 0.05
    assert batch_mean_entropy(codes, 64) < estimate_entropy(codes).marginal_bits


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        estimate_entropy(np.zeros((0, 3)))
