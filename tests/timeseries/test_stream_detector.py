"""The streaming detector: hand values of the magnitude and threshold, spikes, dropouts and
level shifts flagged at their injection positions, and a state rebuilt from stored rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mamlctl.errors import InputError
from mamlctl.timeseries.anomaly import MAX_THRESHOLD_Z, calibrate, score_from_z
from mamlctl.timeseries.stream_detector import (
    DetectorConfig,
    StreamState,
    restore_state,
    run_stream,
    step,
    tail_magnitude,
    threshold_z,
)


def test_magnitude_hand_values_and_no_saturation() -> None:
    # -log10 of the two-sided tail: 2 * (1 - Phi(z))
    assert tail_magnitude(0.0) == 0.0
    assert tail_magnitude(1.959963984540054) == pytest.approx(-math.log10(0.05), rel=1e-12)
    assert tail_magnitude(3.0) == pytest.approx(-math.log10(0.0026997960632601866), rel=1e-12)
    # continuous across the switch to the asymptotic series (x = 20, z = 28.28)
    z0 = 20.0 * math.sqrt(2.0)
    below, above = tail_magnitude(z0 * (1 - 1e-12)), tail_magnitude(z0)
    assert above == pytest.approx(-math.log10(math.erfc(20.0)), rel=1e-10)
    assert above == pytest.approx(below, rel=1e-9)
    # huge z: still finite and increasing; -log10 p ~ z^2 / (2 ln 10)
    zs = [10.0, 38.0, 100.0, 1e3, 1e6]
    mags = [tail_magnitude(z) for z in zs]
    assert all(math.isfinite(m) for m in mags)
    assert mags == sorted(mags)
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    for z, m in zip(zs[:4], mags[:4], strict=True):  # oracle: 50-digit erfc
        assert m == pytest.approx(float(-mp.log10(mp.erfc(mp.mpf(z) / mp.sqrt(2)))), rel=1e-12)
    assert mags[4] == pytest.approx(1e12 / (2 * math.log(10)), rel=1e-9)
    assert score_from_z(100.0) == 1.0  # the score saturates, the magnitude does not


def test_threshold_z_inverts_the_score_and_never_reaches_one() -> None:
    assert threshold_z(float(score_from_z(4.5))) == pytest.approx(4.5, rel=1e-9)
    assert threshold_z(0.5) == 3.0  # floor: min_z
    assert threshold_z(1.0) == MAX_THRESHOLD_Z  # an old saturated threshold still fires
    assert threshold_z(float(score_from_z(9.0))) == MAX_THRESHOLD_Z
    with pytest.raises(InputError, match="threshold"):
        threshold_z(1.5)


def test_calibration_on_few_points_stays_below_one() -> None:
    # 20 residuals, one at 50 sigma: the 0.995 quantile is the max, whose score is 1.0
    r = np.r_[np.random.default_rng(0).normal(0, 1, 19), 50.0]
    cal = calibrate(r, false_alarm_rate=0.005)
    assert cal.threshold < 1.0
    assert cal.threshold == float(score_from_z(MAX_THRESHOLD_Z))


def _sine(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    return 10 + np.sin(2 * np.pi * t / 24) + 0.02 * np.random.default_rng(seed).normal(size=n)


def seasonal_naive(window: np.ndarray) -> tuple[float, float]:
    """Forecast y_t = y_{t-24} (window of 24), sigma 0.1."""
    return float(window[0]), 0.1


def test_injected_spike_dropout_and_level_shift_are_flagged_where_injected() -> None:
    clean = _sine(24 + 300)
    stream = clean[24:].copy()
    stream[50] += 3.0  # spike
    stream[120:123] = 0.0  # dropout of three points
    stream[200:] += 2.0  # level shift
    state = StreamState(clean[:24].copy())
    _, verdicts = run_stream(state, stream, seasonal_naive, z_threshold=4.0)
    flagged = [i for i, v in enumerate(verdicts) if v.is_anomaly]
    # spike and dropout: exactly their points (replaced in the window: no echo 24 steps on);
    # the shift: from its onset until the window learnt it (24 steps + the 3 replaced ones)
    assert flagged == [50, 120, 121, 122, *range(200, 227)]
    assert [verdicts[i].replaced for i in (50, 120, 121, 122, 200, 202, 203)] == [
        True,
        True,
        True,
        True,
        True,
        True,
        False,
    ]
    assert verdicts[50].z == pytest.approx(abs(stream[50] - stream[26]) / 0.1)
    assert verdicts[50].magnitude == pytest.approx(tail_magnitude(verdicts[50].z))
    assert max(v.z for i, v in enumerate(verdicts) if i not in flagged) < 4.0


def test_step_is_pure_and_rejects_non_finite() -> None:
    state = StreamState(np.arange(4.0))
    new, verdict = step(state, 10.0, 3.0, 1.0, z_threshold=3.0)
    assert state.window.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert new.window.tolist() == [1.0, 2.0, 3.0, 3.0] and new.run == 1  # replaced
    assert verdict.z == 7.0 and verdict.is_anomaly and verdict.replaced
    with pytest.raises(InputError, match="not finite"):
        step(state, math.nan, 3.0, 1.0, z_threshold=3.0)
    with pytest.raises(InputError, match="sigma"):
        step(state, 1.0, 3.0, 0.0, z_threshold=3.0)


def test_restore_state_continues_like_the_uninterrupted_run() -> None:
    clean = _sine(24 + 150, seed=3)
    stream = clean[24:].copy()
    stream[60] += 3.0
    stream[98:100] = 0.0  # a dropout running into the cut
    cfg = DetectorConfig()
    start = StreamState(clean[:24].copy())
    full_state, full = run_stream(start, stream, seasonal_naive, z_threshold=4.0, config=cfg)
    cut = 100
    _, head = run_stream(start, stream[:cut], seasonal_naive, z_threshold=4.0, config=cfg)
    # what the registry holds: raw values, flags and the replacing forecasts
    values = np.r_[clean[:24], stream[:cut]]
    flags = np.r_[np.zeros(24, bool), [v.is_anomaly for v in head]]
    rep = np.r_[np.full(24, np.nan), [v.forecast if v.replaced else np.nan for v in head]]
    restored = restore_state(values, window=24, flagged=flags, replacement=rep)
    assert restored.run == 2
    end, tail = run_stream(restored, stream[cut:], seasonal_naive, z_threshold=4.0, config=cfg)
    assert [v.forecast for v in tail] == [v.forecast for v in full[cut:]]
    assert [v.is_anomaly for v in tail] == [v.is_anomaly for v in full[cut:]]
    assert np.array_equal(end.window, full_state.window)
