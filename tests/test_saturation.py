"""The saturation rule on synthetic curves with known knees."""

import numpy as np
import pytest

from bitlens.analysis.saturation import detect_saturation

POS = np.arange(1, 65)


def test_exponential_rise_saturates_where_it_enters_the_band():
    values = 100 * (1 - np.exp(-POS / 5.0))
    sat = detect_saturation(POS, values)
    # plateau ~ 100, band = 10 percent of the rise: 100 (1 - exp(-t/5)) >= ~91.8 from t = 13
    assert sat.plateau_bits == pytest.approx(100, abs=0.1)
    assert sat.saturation_position == 13


def test_step_curve_saturates_at_the_step():
    values = np.where(POS < 20, 10.0, 50.0)
    assert detect_saturation(POS, values).saturation_position == 20


def test_linear_rise_has_no_saturation():
    sat = detect_saturation(POS, 2.0 * POS)
    assert sat.saturation_position is None
    assert sat.plateau_bits == pytest.approx(2.0 * POS[-16:].mean())


def test_flat_curve_saturates_at_the_first_position():
    values = 30 + np.random.default_rng(0).normal(0, 0.1, len(POS))
    assert detect_saturation(POS, values).saturation_position == 1


def test_noisy_plateau_and_uneven_positions():
    positions = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64])
    clean = 200 * (1 - np.exp(-positions / 3.0))
    noisy = clean + np.random.default_rng(1).normal(0, 2.0, len(positions))
    sat = detect_saturation(positions, noisy)
    assert sat.saturation_position in (6, 8)  # clean curve enters the 10 percent band at t ~ 6.9
    assert abs(sat.plateau_bits - 200) < 3


def test_a_late_dip_delays_saturation():
    values = np.minimum(POS, 10).astype(float)
    values[40] = 2.0  # one point far below the plateau: the curve has not settled before it
    assert detect_saturation(POS, values).saturation_position == POS[41]


def test_bad_curves_are_refused():
    with pytest.raises(ValueError):
        detect_saturation([1], [1.0])
    with pytest.raises(ValueError):
        detect_saturation([1, 1, 2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        detect_saturation([1, 2], [1.0, float("nan")])
