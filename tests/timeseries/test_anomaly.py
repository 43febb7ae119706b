"""The one anomaly score: hand values, invariants, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.errors import InputError
from mamlctl.timeseries.anomaly import (
    MAD_TO_SIGMA,
    anomaly_score,
    calibrate,
    calibrate_many,
    flag,
    robust_scale,
    score_from_z,
    window_score,
)

finite = st.floats(-1e6, 1e6, allow_nan=False)
positive = st.floats(1e-6, 1e6)


def test_score_hand_values() -> None:
    # 2 Phi(z) - 1: the 1-, 2- and 3-sigma mass of a normal distribution.
    got = anomaly_score([0.0, 1.0, -2.0, 3.0], 1.0)
    assert got == pytest.approx([0.0, 0.6826894921370859, 0.9544997361036416, 0.9973002039367398])
    assert anomaly_score(5.0, 2.5) == pytest.approx(0.9544997361036416)
    assert score_from_z(40.0) == 1.0


@settings(max_examples=200, deadline=None)
@given(finite, finite, positive)
def test_score_monotone_in_abs_residual(a: float, b: float, s: float) -> None:
    sa, sb = anomaly_score(a, s), anomaly_score(b, s)
    if abs(a) <= abs(b):
        assert sa <= sb
    assert 0.0 <= sa <= 1.0 and 0.0 <= sb <= 1.0


@settings(max_examples=200, deadline=None)
@given(finite, positive, st.floats(1e-3, 1e3))
def test_score_scale_invariant_and_symmetric(r: float, s: float, c: float) -> None:
    base = anomaly_score(r, s)
    assert anomaly_score(r * c, s * c) == pytest.approx(base, abs=1e-12)
    assert anomaly_score(-r, s) == base


def test_flag_uses_greater_or_equal() -> None:
    assert flag([0.5, 0.7, 0.9], 0.7).tolist() == [False, True, True]
    with pytest.raises(InputError, match="threshold"):
        flag([0.5], 1.5)


def test_robust_scale_is_consistent_and_resists_outliers() -> None:
    rng = np.random.default_rng(0)
    r = rng.normal(0, 2.0, 20_000)
    assert robust_scale(r) == pytest.approx(2.0, rel=0.03)
    spiked = r.copy()
    spiked[:500] = 1e6  # 2.5% gross anomalies barely move the scale
    assert robust_scale(spiked) == pytest.approx(2.0, rel=0.08)
    assert robust_scale([1.0, -1.0, 3.0]) == pytest.approx(MAD_TO_SIGMA)
    assert robust_scale(np.zeros(5), min_scale=0.25) == 0.25


def test_calibrate_threshold_quantile_and_floor() -> None:
    rng = np.random.default_rng(1)
    r = rng.standard_t(3, 50_000)  # heavy tails: the 3-sigma floor is too low here
    cal = calibrate(r, false_alarm_rate=0.01, min_z=3.0)
    flagged = cal.flag(r).mean()
    assert flagged == pytest.approx(0.01, abs=0.002)
    assert cal.threshold > float(score_from_z(3.0))
    light = calibrate(rng.normal(0, 1, 2_000), false_alarm_rate=0.2, min_z=3.0)
    assert light.threshold == pytest.approx(float(score_from_z(3.0)))  # the floor binds
    assert light.n_residuals == 2_000


def test_anomaly_input_errors() -> None:
    with pytest.raises(InputError, match="scale"):
        anomaly_score(1.0, 0.0)
    with pytest.raises(InputError, match="NaN"):
        anomaly_score(math.nan, 1.0)
    with pytest.raises(InputError, match="no held-out"):
        calibrate([])
    with pytest.raises(InputError, match="false_alarm_rate"):
        calibrate([1.0, 2.0], false_alarm_rate=0.0)


def test_window_score_is_the_worst_step() -> None:
    assert window_score([0.1, -3.0, 1.0], 1.0) == pytest.approx(0.9973002039367398)
    assert window_score([1.0, 1.0], [1.0, 0.5]) == pytest.approx(0.9544997361036416)
    with pytest.raises(InputError, match="no residuals"):
        window_score([], 1.0)


def test_calibrate_many_matches_one_by_one_and_names_the_series() -> None:
    rng = np.random.default_rng(2)
    series = [rng.normal(0, s, n) for s, n in ((1.0, 300), (5.0, 50))]
    many = calibrate_many(series, false_alarm_rate=0.05)
    assert many == [calibrate(r, false_alarm_rate=0.05) for r in series]
    with pytest.raises(InputError, match="series #1"):
        calibrate_many([series[0], []])
