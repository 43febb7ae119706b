"""M4 metrics against hand-computed values and the organisers' R definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.errors import InputError
from mamlctl.timeseries.metrics import m4_accuracy, mase, mase_scale, owa, smape


def test_smape_hand_computed() -> None:
    # 200*10/210 and 200*20/380, averaged over the horizon.
    got = smape([[100.0, 200.0]], [[110.0, 180.0]])
    assert got == pytest.approx([(200 * 10 / 210 + 200 * 20 / 380) / 2])
    assert got[0] == pytest.approx(10.025062656641603)


def test_smape_per_series_and_zero_over_zero() -> None:
    got = smape([[1.0, 0.0], [4.0, 4.0]], [[1.0, 0.0], [2.0, 4.0]])
    # Row 0 is perfect (0/0 counts as 0); row 1: (200*2/6 + 0)/2.
    assert got == pytest.approx([0.0, 200 * 2 / 6 / 2])


def test_mase_hand_computed_m1_and_m2() -> None:
    history = [1.0, 2.0, 4.0, 7.0, 11.0]
    # m=1: |diffs| 1,2,3,4 -> scale 2.5; errors 1,3 -> mean 2 -> 0.8
    assert mase([history], [[12.0, 14.0]], [[11.0, 11.0]], m=1) == pytest.approx([0.8])
    # m=2: |4-1|,|7-2|,|11-4| = 3,5,7 -> scale 5 -> 0.4
    assert mase([history], [[12.0, 14.0]], [[11.0, 11.0]], m=2) == pytest.approx([0.4])


def _mase_scale_r(insample: list[float], frq: int) -> float:
    """The organisers' mase_cal denominator, transcribed loop by loop."""
    naive_sd = [math.nan] * frq + [insample[j - frq] for j in range(frq, len(insample))]
    errs = [abs(a - b) for a, b in zip(insample, naive_sd, strict=True) if not math.isnan(b)]
    return sum(errs) / len(errs)


def test_mase_scale_ragged_matches_r_definition() -> None:
    rng = np.random.default_rng(3)
    histories = [list(rng.uniform(10, 20, size=n)) for n in (30, 49, 72, 25)]
    got = mase_scale(histories, m=24)
    want = [_mase_scale_r(h, 24) for h in histories]
    assert got == pytest.approx(want, rel=1e-12)


def test_owa_hand_computed() -> None:
    assert owa(10.0, 1.0, smape_naive2=20.0, mase_naive2=4.0) == pytest.approx(0.375)


def test_m4_accuracy_means_over_series_then_owa() -> None:
    histories = [[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0]]  # MASE scales (m=1): 1 and 10
    actual = [[5.0, 6.0], [40.0, 50.0]]
    method = [[5.0, 5.0], [40.0, 40.0]]
    naive2 = [[4.0, 4.0], [30.0, 30.0]]
    acc = m4_accuracy(histories, actual, method, m=1, naive2_forecast=naive2)
    s_method = [(0 + 200 / 11) / 2, (0 + 2000 / 90) / 2]
    q_method = [(0 + 1) / 2 / 1, (0 + 10) / 2 / 10]
    s_naive2 = [(200 / 9 + 400 / 10) / 2, (2000 / 70 + 4000 / 80) / 2]
    q_naive2 = [(1 + 2) / 2, (10 + 20) / 2 / 10]
    assert acc.smape_per_series == pytest.approx(s_method)
    assert acc.mase_per_series == pytest.approx(q_method)
    assert acc.smape == pytest.approx(np.mean(s_method))
    assert acc.mase == pytest.approx(0.5)
    want = (np.mean(s_method) / np.mean(s_naive2) + 0.5 / np.mean(q_naive2)) / 2
    assert acc.owa == pytest.approx(want)
    assert acc.n_series == 2
    # Naive2 against itself is 1 by definition.
    self_owa = m4_accuracy(histories, actual, naive2, m=1, naive2_forecast=naive2).owa
    assert self_owa == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.1, 1e4), min_size=1, max_size=12).flatmap(
        lambda a: st.tuples(
            st.just(a), st.lists(st.floats(0.1, 1e4), min_size=len(a), max_size=len(a))
        )
    )
)
def test_smape_symmetric_and_bounded(pair: tuple[list[float], list[float]]) -> None:
    a, f = pair
    s1, s2 = smape([a], [f])[0], smape([f], [a])[0]
    assert s1 == pytest.approx(s2)
    assert 0.0 <= s1 <= 200.0


@settings(max_examples=30, deadline=None)
@given(st.floats(0.01, 1e3), st.integers(1, 5))
def test_mase_scale_invariant(c: float, m: int) -> None:
    rng = np.random.default_rng(m)
    h, y, f = rng.uniform(1, 9, 20), rng.uniform(1, 9, (1, 4)), rng.uniform(1, 9, (1, 4))
    assert mase([h * c], y * c, f * c, m=m) == pytest.approx(mase([h], y, f, m=m), rel=1e-9)


def test_metric_input_errors() -> None:
    with pytest.raises(InputError, match="shape"):
        smape([[1.0, 2.0]], [[1.0]])
    with pytest.raises(InputError, match="NaN"):
        smape([[1.0, np.nan]], [[1.0, 1.0]])
    with pytest.raises(InputError, match="needs more than m"):
        mase_scale([[1.0, 2.0, 3.0]], m=3)
    with pytest.raises(InputError, match="undefined"):
        mase_scale([[5.0, 5.0, 5.0]], m=1)
    with pytest.raises(InputError, match="histories"):
        mase([[1.0, 2.0, 3.0]], [[1.0], [2.0]], [[1.0], [2.0]], m=1, scale=np.array([1.0]))
