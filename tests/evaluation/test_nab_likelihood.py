"""Numenta's anomaly likelihood against hand-computed cases and a literal row-by-row
re-implementation of the published procedure (deque of past scores, stateful moving average)."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from mamlctl.errors import InputError
from mamlctl.timeseries.anomaly_likelihood import (
    anomaly_likelihood,
    log_likelihood,
    nab_likelihood_periods,
)


def q(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def test_hand_computed_reestimation_and_learning_skip() -> None:
    # learning 2 + estimation 2: rows 0-3 are 0.5. W' = 1 (the average is the raw score).
    # Row 4: history rows 0-3, learning rows 0-1 skipped -> mean 0.3, std 0.1.
    # Row 6 (re-estimation, R = 2): history rows 2-5 (W = 4) -> mean 0.4, var 0.095.
    raw = [0.9, 0.9, 0.2, 0.4, 0.9, 0.1, 0.5]
    got = anomaly_likelihood(
        raw,
        learning_period=2,
        estimation_samples=2,
        historic_window=4,
        short_window=1,
        reestimation_period=2,
    )
    want = [
        0.5,
        0.5,
        0.5,
        0.5,
        1 - q(6.0),  # (0.9 - 0.3) / 0.1
        1 - q(-2.0),  # (0.1 - 0.3) / 0.1
        1 - q(0.1 / math.sqrt(0.095)),
    ]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got[5] == pytest.approx(0.022750131948179, abs=1e-12)
    assert got[6] == pytest.approx(0.6272, abs=1e-4)  # Phi(0.3244) from a normal table


def test_hand_computed_floors_and_red_filter() -> None:
    # Zeros: mean and variance floor at 0.03 and 0.0003. W' = 2.
    raw = [0.0] * 8 + [1.0, 1.0, 0.2]
    got = anomaly_likelihood(
        raw,
        learning_period=2,
        estimation_samples=2,
        historic_window=100,
        short_window=2,
        reestimation_period=100,
    )
    sd = math.sqrt(0.0003)
    np.testing.assert_allclose(got[4:8], 1 - q(-0.03 / sd), atol=1e-12)  # 0.0416
    assert got[8] == 1 - q((0.5 - 0.03) / sd)  # onset of red: kept (== 1.0)
    assert got[9] == pytest.approx(0.999, abs=1e-15)  # red after red: yellow
    assert got[10] == pytest.approx(0.999, abs=1e-15)  # average 0.6, still red after red
    np.testing.assert_allclose(
        log_likelihood(got[[0, 8, 9]]), [math.log(0.5) / math.log(1e-10), 1.0, 0.3], atol=1e-9
    )


def reference(
    raw: list[float],
    learning: int,
    estimation: int,
    window: int,
    short: int,
    every: int,
    two_sided: bool = False,
) -> list[float]:
    """Row by row, as the published procedure runs: state between rows, nothing vectorised."""
    history: deque[float] = deque(maxlen=window)
    out = []
    mean = std = None
    recent: deque[float] = deque(maxlen=short)
    previous_tail = None

    def tail_of(average: float) -> float:
        z = (average - mean) / std
        return q(abs(z) if two_sided else z)

    for i, s in enumerate(raw):
        if i < learning + estimation:
            out.append(0.5)
        else:
            if mean is None or i % every == 0:
                averages, buf = [], deque(maxlen=short)
                for h in history:
                    buf.append(h)
                    averages.append(sum(buf) / len(buf))
                skip = min(i, max(0, learning - max(0, i - window)))
                data = averages[skip:]
                mean = max(sum(data) / len(data), 0.03)
                var = sum((a - sum(data) / len(data)) ** 2 for a in data) / len(data)
                std = math.sqrt(max(var, 0.0003))
                recent = buf
                previous_tail = tail_of(averages[-1])
            recent.append(s)
            tail = tail_of(sum(recent) / len(recent))
            shown = 1e-3 if tail <= 1e-5 and previous_tail <= 1e-5 else tail
            previous_tail = tail
            out.append(1.0 - shown)
        history.append(s)
    return out


@pytest.mark.parametrize(("seed", "two_sided"), [(0, False), (1, False), (2, True)])
def test_matches_literal_row_by_row_procedure(seed: int, two_sided: bool) -> None:
    rng = np.random.default_rng(seed)
    raw = np.clip(rng.gamma(0.5, 0.1, 900), 0, 1)
    raw[rng.choice(900, 12, replace=False)] = 1.0
    raw[500:530] = rng.uniform(0.6, 1.0, 30)  # a sustained event: red runs get filtered
    args = (50, 20, 300, 10, 37)
    got = anomaly_likelihood(
        raw,
        learning_period=args[0],
        estimation_samples=args[1],
        historic_window=args[2],
        short_window=args[3],
        reestimation_period=args[4],
        two_sided=two_sided,
    )
    want = reference(list(raw), *args, two_sided=two_sided)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.any(np.isclose(got, 0.999)) and np.any(got > 0.99999)


def test_published_defaults_are_causal() -> None:
    rng = np.random.default_rng(3)
    raw = rng.uniform(0, 0.3, 12000)
    base = anomaly_likelihood(raw)
    assert np.all(base[:388] == 0.5)  # learning 288 + estimation 100
    changed = raw.copy()
    changed[9001:] = 1.0
    again = anomaly_likelihood(changed)
    np.testing.assert_array_equal(base[:9001], again[:9001])
    assert again[9001] > base[9001] and again[9002:9005].max() > 0.99999


def test_nab_periods_and_log_scale() -> None:
    assert nab_likelihood_periods(750) == (375, 375)
    assert nab_likelihood_periods(151) == (75, 76)
    np.testing.assert_allclose(
        log_likelihood([0.0, 0.5, 0.999, 1.0]), [0, 0.0301, 0.3, 1], atol=1e-4
    )


def test_bad_input_is_one_line_error() -> None:
    with pytest.raises(InputError, match="lie in"):
        anomaly_likelihood([0.1, 1.5])
    with pytest.raises(InputError, match="lie in"):
        anomaly_likelihood([0.1, float("nan")])
    with pytest.raises(InputError, match="positive"):
        anomaly_likelihood([0.1], short_window=0)
    with pytest.raises(InputError, match="lie in"):
        log_likelihood([1.2])


def test_two_sided_flags_a_quiet_spell_one_sided_does_not() -> None:
    raw = [0.5, 0.3] * 10 + [0.0] * 3  # W' = 1: averages 0.4 +- 0.1, then 0
    kw = {
        "learning_period": 0,
        "estimation_samples": 20,
        "historic_window": 100,
        "short_window": 1,
        "reestimation_period": 100,
    }
    one = anomaly_likelihood(raw, **kw)
    two = anomaly_likelihood(raw, **kw, two_sided=True)
    assert one[20] == pytest.approx(1 - q(-4.0), abs=1e-15)  # 3.2e-5
    assert two[20] == pytest.approx(1 - q(4.0), abs=1e-15)  # 0.99997
