"""Baselines against hand computations and the M4 organisers' R benchmark definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mamlctl.errors import InputError
from mamlctl.timeseries.baselines import (
    acf,
    auto_ets,
    auto_theta,
    multiplicative_seasonal,
    naive,
    naive2,
    seasonal_naive,
    seasonality_test,
)

PATTERN = np.array([0.8, 1.0, 1.3, 0.9])  # mean 1.0


def test_naive_and_seasonal_naive_hand() -> None:
    hist = [[1.0, 2.0, 3.0, 4.0, 5.0], [7.0, 8.0, 9.0]]
    assert naive(hist, 3).tolist() == [[5.0] * 3, [9.0] * 3]
    # last cycle (m=3) of each series, repeated
    assert seasonal_naive(hist, 4, m=3).tolist() == [[3, 4, 5, 3], [7, 8, 9, 7]]
    assert seasonal_naive(hist, 2, m=1).tolist() == naive(hist, 2).tolist()
    with pytest.raises(InputError, match="seasonal naive needs m=4"):
        seasonal_naive(hist, 2, m=4)


def test_acf_hand() -> None:
    # mean 2.5, deviations -1.5 -.5 .5 1.5, sum of squares 5
    assert acf([1.0, 2.0, 3.0, 4.0], 2) == pytest.approx([1.25 / 5, -1.5 / 5])
    assert np.isnan(acf([3.0, 3.0, 3.0], 1)).all()


def _seasonality_test_r(x: list[float], ppy: int) -> bool:
    """SeasonalityTest of 'Benchmarks and Evaluation.R', transcribed with plain loops."""
    n = len(x)
    if n < 3 * ppy:
        return False
    lag_max = min(math.floor(10 * math.log10(n)), n - 1)  # acf()'s default lag.max
    if ppy > lag_max:
        return False  # xacf[ppy] is NA in R, and so is the test
    mean = sum(x) / n
    den = sum((v - mean) ** 2 for v in x)
    xacf = [
        sum((x[t] - mean) * (x[t + k] - mean) for t in range(n - k)) / den
        for k in range(1, ppy + 1)
    ]
    clim = 1.645 / math.sqrt(n) * math.sqrt(1 + 2 * sum(a * a for a in xacf[: ppy - 1]))
    return abs(xacf[ppy - 1]) > clim


def test_seasonality_test_matches_r_transcription() -> None:
    rng = np.random.default_rng(0)
    cases = [
        100 * PATTERN[np.arange(40) % 4] + rng.normal(0, 1, 40),  # seasonal
        rng.normal(100, 1, 40),  # noise
        100 + np.arange(40.0),  # trend only
        100 * PATTERN[np.arange(40) % 4] * (1 + 0.3 * rng.normal(size=40)),  # weak season
    ]
    got = [seasonality_test(c, 4) for c in cases]
    assert got == [_seasonality_test_r(list(c), 4) for c in cases]
    assert got[0] is True and got[1] is False


def test_seasonality_test_inherits_r_default_lag_max() -> None:
    # floor(10 log10 n) < 24 for n < 252: R's acf() stops short of lag 24 and the test is NA.
    t = np.arange(300)
    x = 100 + 20 * np.sin(2 * np.pi * t / 24)
    assert seasonality_test(x[:251], 24) is False
    assert seasonality_test(x[:252], 24) is True
    assert _seasonality_test_r(x[:251].tolist(), 24) is False
    assert _seasonality_test_r(x[:252].tolist(), 24) is True


def test_seasonality_test_degenerate_cases() -> None:
    x = 100 * PATTERN[np.arange(11) % 4]
    assert seasonality_test(x, 4) is False  # fewer than 3 periods
    assert seasonality_test(100 * PATTERN[np.arange(40) % 4], 1) is False  # m = 1
    assert seasonality_test(np.full(40, 5.0), 4) is False  # constant: ACF undefined


def _decompose_figure_r(x: list[float], f: int) -> list[float]:
    """R's decompose(type = "multiplicative") seasonal figure, transcribed with loops."""
    n = len(x)
    filt = [0.5] + [1.0] * (f - 1) + [0.5] if f % 2 == 0 else [1.0] * f
    filt = [w / f for w in filt]
    half = len(filt) // 2
    trend = [math.nan] * n
    for i in range(half, n - half):
        trend[i] = sum(filt[j] * x[i - half + j] for j in range(len(filt)))
    season = [x[i] / trend[i] for i in range(n)]
    figure = []
    for i in range(f):
        vals = [season[k] for k in range(i, n, f) if not math.isnan(season[k])]
        figure.append(sum(vals) / len(vals))
    mean = sum(figure) / f
    return [v / mean for v in figure]


def test_multiplicative_seasonal_matches_r_transcription() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(27)
    x = (50 + 2 * t) * PATTERN[t % 4] * (1 + 0.02 * rng.normal(size=27))
    assert multiplicative_seasonal(x, 4) == pytest.approx(_decompose_figure_r(list(x), 4))
    y = (20 + t[:23]) * np.array([0.7, 1.1, 1.2])[t[:23] % 3]  # odd period
    assert multiplicative_seasonal(y, 3) == pytest.approx(_decompose_figure_r(list(y), 3))


def test_naive2_on_exact_multiplicative_season() -> None:
    # A flat level of 100 times a fixed pattern: the centred MA is exactly 100, the indices
    # are the pattern, and Naive2 must continue the pattern from the right phase (n = 41).
    x = 100 * PATTERN[np.arange(41) % 4]
    got = naive2([x], 6, m=4)
    assert got[0] == pytest.approx(100 * PATTERN[np.arange(41, 47) % 4])


def test_naive2_hand_computed_with_trend() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(30)
    x = (50 + 2 * t) * PATTERN[t % 4] * (1 + 0.01 * rng.normal(size=30))
    assert _seasonality_test_r(list(x), 4)
    fig = _decompose_figure_r(list(x), 4)
    level = x[-1] / fig[29 % 4]
    want = [level * fig[(30 + k) % 4] for k in range(5)]
    assert naive2([x], 5, m=4)[0] == pytest.approx(want)


def test_naive2_is_naive_when_not_seasonal() -> None:
    rng = np.random.default_rng(4)
    hist = [rng.normal(100, 1, 60), 100 * PATTERN[np.arange(10) % 4]]  # noise; too short
    assert naive2(hist, 4, m=4).tolist() == naive(hist, 4).tolist()
    assert naive2(hist, 4, m=1).tolist() == naive(hist, 4).tolist()


def test_statsforecast_wrappers_continue_an_exact_pattern() -> None:
    x = 100 * PATTERN[np.arange(40) % 4]
    want = 100 * PATTERN[np.arange(40, 48) % 4]
    assert auto_ets([x], 8, m=4)[0] == pytest.approx(want, rel=1e-3)
    assert auto_theta([x], 8, m=4)[0] == pytest.approx(want, rel=1e-3)
    line = 50 + 2 * np.arange(30.0)
    assert auto_theta([line], 3, m=1)[0] == pytest.approx([110, 112, 114], rel=1e-3)


def test_baseline_input_errors() -> None:
    with pytest.raises(InputError, match="horizon"):
        naive([[1.0]], 0)
    with pytest.raises(InputError, match="NaN"):
        naive2([[1.0, np.nan]], 2, m=1)
    with pytest.raises(InputError, match="no series"):
        naive([], 2)
