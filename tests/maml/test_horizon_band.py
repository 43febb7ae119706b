"""The family's prediction band (:mod:`mamlctl.maml.horizon_band`) and the band rule of
``forecast --level`` (:func:`mamlctl.contract.band_multiplier`,
:func:`mamlctl.stages.forecast.interval_bounds`).

Oracles: a random walk, whose h-step error has standard deviation ``sqrt(h)`` times the
one-step one and Gaussian quantiles (so growth ``sqrt(h)`` and multipliers ``z_{(1+l)/2}``);
Student-t errors, whose 95 % multiplier is the t quantile over the robust scale; pool adjacent
violators checked by hand; nested, monotone bands as properties.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.contract import band_json, band_multiplier, parse_band
from mamlctl.errors import TrainingError
from mamlctl.maml.horizon_band import LEVELS, HorizonBand, band_from_heldout, monotone_fit
from mamlctl.stages.forecast import interval_bounds


def gauss(level: float) -> float:
    return NormalDist().inv_cdf((1 + level / 100) / 2)


def random_walk_errors(n: int, h: int, seed: int, c: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """One-step residuals [n, c] (sd 2) and the h-step errors [n, h] of forecasting a random
    walk by its last value: the cumulated one-step shocks (sd 2 * sqrt(h))."""
    rng = np.random.default_rng(seed)
    one_step = 2.0 * rng.standard_normal((n, c))
    errors = np.cumsum(2.0 * rng.standard_normal((n, h)), axis=1)
    return one_step, errors


def test_pool_adjacent_violators_by_hand() -> None:
    np.testing.assert_allclose(monotone_fit(np.array([1.0, 3.0, 2.0, 4.0])), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(monotone_fit(np.array([3.0, 1.0, 2.0])), [2, 2, 2])
    np.testing.assert_allclose(monotone_fit(np.array([1.0, 2.0])), [1, 2])


def test_random_walk_growth_is_sqrt_h_and_multipliers_gaussian() -> None:
    one_step, errors = random_walk_errors(4000, 24, seed=0)
    band = band_from_heldout(one_step, errors, np.ones(4000))
    growth = np.asarray(band.growth)
    assert growth[0] == 1.0 and np.all(np.diff(growth) >= 0)
    # relative to the estimate at step 1 (its sampling error, ~2 %, shifts the whole curve):
    # the shape is sqrt(h) within a few percent, the level within 10 %
    ratio = growth / np.sqrt(np.arange(1, 25))
    assert ratio.max() / ratio.min() < 1.08
    np.testing.assert_allclose(ratio, 1.0, atol=0.1)
    table = dict(band.table())
    for level in (50.0, 80.0, 95.0):
        assert table[level] == pytest.approx(gauss(level), rel=0.05)


def test_a_noisy_one_step_scale_widens_the_band() -> None:
    # 12 one-step residuals per series: the per-series scale is uncertain, z = e / s has
    # heavier tails than a Gaussian and the 95 % multiplier says so
    one_step, errors = random_walk_errors(4000, 24, seed=0, c=12)
    table = dict(band_from_heldout(one_step, errors, np.ones(4000)).table())
    assert table[95.0] > 1.1 * gauss(95.0)


def test_heavy_tails_widen_the_high_levels_only_where_needed() -> None:
    rng = np.random.default_rng(1)
    n, h, df = 4000, 12, 3
    one_step = rng.standard_t(df, size=(n, 48))
    errors = rng.standard_t(df, size=(n, h))
    band = dict(band_from_heldout(one_step, errors, np.ones(n)).table())
    # MAD scale of t(3): 0.6745 / median|t3| = 0.6745 / 0.7649; the 95 % band is t3's 97.5 %
    # quantile (3.182) in that scale, far above the Gaussian 1.96
    mad_sigma = 0.7649 / 0.6745
    assert band[95.0] == pytest.approx(3.182 / mad_sigma, rel=0.1)
    assert band[95.0] > 1.2 * gauss(95.0)


def test_band_round_trips_through_the_initializer_and_rejects_malformed() -> None:
    one_step, errors = random_walk_errors(200, 6, seed=2)
    band = band_from_heldout(one_step, errors, np.ones(200))
    assert HorizonBand.from_train_config({"horizon_band": band.to_dict()}, horizon=6) == band
    assert HorizonBand.from_train_config({}, horizon=6) is None
    with pytest.raises(TrainingError, match="does not fit H=5"):
        HorizonBand.from_train_config({"horizon_band": band.to_dict()}, horizon=5)
    with pytest.raises(TrainingError, match="malformed"):
        HorizonBand.from_train_config({"horizon_band": {"growth": [1.0]}}, horizon=1)


def test_file_metadata_round_trip_and_gaussian_without_a_band() -> None:
    levels, mult = (80.0, 95.0), (1.5, 2.7)
    assert parse_band(band_json(levels, mult)) == ((80.0, 1.5), (95.0, 2.7))
    assert parse_band(None) is None
    with pytest.raises(ValueError):
        parse_band(band_json(levels, (2.7, 1.5)))  # narrower at a higher level
    for level in (10.0, 80.0, 99.9):
        assert band_multiplier(level, None) == pytest.approx(gauss(level))
    band = parse_band(band_json(levels, mult))
    assert band_multiplier(80.0, band) == 1.5 and band_multiplier(95.0, band) == 2.7
    assert band_multiplier(87.5, band) == pytest.approx(2.1)  # linear between the levels
    # outside: the Gaussian quantile times the nearest level's ratio
    assert band_multiplier(99.0, band) == pytest.approx(2.7 / gauss(95.0) * gauss(99.0))


tables = st.lists(st.floats(0.05, 5.0), min_size=1, max_size=len(LEVELS)).map(
    lambda xs: tuple(zip(LEVELS, np.maximum.accumulate(np.asarray(xs)).tolist(), strict=False))
)


@settings(max_examples=80, deadline=None)
@given(
    band=st.none() | tables,
    low=st.floats(1.0, 98.0),
    gap=st.floats(0.0, 1.0),
    growth=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=12),
    scale=st.floats(0.01, 100.0),
)
def test_bands_are_nested_and_widen_where_sigma_grows(
    band: tuple[tuple[float, float], ...] | None,
    low: float,
    gap: float,
    growth: list[float],
    scale: float,
) -> None:
    high = low + gap * (99.5 - low)
    # sigma as the graph serves it: residual scale times a non-decreasing growth from 1
    sigma = scale * np.cumsum([1.0, *growth])
    yhat = np.linspace(-3.0, 3.0, sigma.size)
    lo_a, hi_a = interval_bounds(yhat, sigma, low, band)
    lo_b, hi_b = interval_bounds(yhat, sigma, high, band)
    assert np.all(lo_b <= lo_a + 1e-9) and np.all(hi_a <= hi_b + 1e-9)  # low inside high
    width = hi_a - lo_a
    assert np.all(width > 0) and np.all(np.diff(width) >= -1e-9 * width[1:])
