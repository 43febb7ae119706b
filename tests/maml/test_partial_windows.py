"""Partial-horizon window tasks: a hand-indexed oracle and the masking invariants.

Oracle: the definition in :mod:`mamlctl.timeseries.windows` (partial form) written with plain
loops over one series; properties: masked targets are exactly those past the stretch (support)
or past the series end (query), nothing past the support moves the support, K + L + 1 points
(S + 1) suffice for a task.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.errors import InputError
from mamlctl.timeseries.windows import (
    SeriesPool,
    WindowTaskSpec,
    recent_support,
    sample_window_tasks,
)


def _hand_task(v: np.ndarray, s: int, spec: WindowTaskSpec) -> dict[str, np.ndarray]:
    """The partial definition with plain loops; NaN where the module doc says unobserved."""
    L, H, K, Q = spec.window, spec.horizon, spec.support, spec.query
    S = K + L
    raw = v[s : s + S]
    loc, scale = raw.mean(), max(raw.std(), 1e-3 * max(1.0, abs(raw.mean())))
    sx = [[v[s + i + t] for t in range(L)] for i in range(K)]
    sy = [[v[s + i + L + h] if i + L + h < S else np.nan for h in range(H)] for i in range(K)]
    qx, qy = [], []
    for j in range(Q):
        first = s + S + j  # the first target of query pair j
        if first < len(v):
            qx.append([v[first - L + t] for t in range(L)])
        else:  # no observed target: the window is clamped to the series end
            qx.append([v[min(first - L + t, len(v) - 1)] for t in range(L)])
        qy.append([v[first + h] if first + h < len(v) else np.nan for h in range(H)])
    return {
        "support_x": (np.array(sx) - loc) / scale,
        "support_y": (np.array(sy) - loc) / scale,
        "query_x": (np.array(qx) - loc) / scale,
        "query_y": (np.array(qy) - loc) / scale,
        "loc": np.array(loc),
        "scale": np.array(scale),
    }


def test_partial_tasks_equal_the_hand_indexed_definition() -> None:
    rng = np.random.default_rng(0)
    # 17 = S + 1 points (one task, one observed query target), 18, and a long series
    series = [rng.normal(5, 2, n).cumsum() for n in (17, 18, 120)]
    spec = WindowTaskSpec(window=6, horizon=3, support=10, query=4, partial=True)
    assert (spec.support_span, spec.span, spec.query_offset) == (16, 17, 10)
    tasks = sample_window_tasks(series, spec, 200, np.random.default_rng(1))
    assert set(tasks.series_index.tolist()) == {0, 1, 2}
    for i in range(200):
        ref = _hand_task(series[tasks.series_index[i]], int(tasks.start[i]), spec)
        for key in ("support_x", "support_y", "query_x", "query_y"):
            np.testing.assert_allclose(getattr(tasks, key)[i], ref[key], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(tasks.loc[i], ref["loc"])
        np.testing.assert_allclose(tasks.scale[i], ref["scale"])


def test_support_pairs_count_every_origin_and_the_first_query_target_follows_the_support() -> None:
    v = np.arange(40, dtype=np.float64)
    spec = WindowTaskSpec(window=5, horizon=4, support=7, query=2, partial=True)
    pool = SeriesPool([v], spec)
    assert pool.total == 40 - 12  # starts 0 .. n - S - 1
    t = pool.sample(1, np.random.default_rng(0))
    s = int(t.start[0])
    raw = lambda a: a * t.scale[0] + t.loc[0]  # noqa: E731
    # K = S - L origins; the last one's horizon has one observed target (the stretch's last)
    assert t.support_x.shape == (1, 7, 5)
    np.testing.assert_allclose(raw(t.support_y[0, -1, 0]), s + 11, rtol=1e-6)
    assert np.isnan(t.support_y[0, -1, 1:]).all() and not np.isnan(t.support_y[0, 0]).any()
    # the first query target is the first point after the support stretch
    np.testing.assert_allclose(raw(t.query_y[0, 0, 0]), s + 12, rtol=1e-6)
    np.testing.assert_allclose(raw(t.query_x[0, 0]), np.arange(s + 7, s + 12), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(1, 8),
    horizon=st.integers(1, 6),
    support=st.integers(1, 8),
    query=st.integers(1, 5),
    extra=st.integers(0, 6),
    seed=st.integers(0, 1000),
)
def test_masked_pairs_never_read_past_the_stretch_and_s_plus_one_points_suffice(
    window: int, horizon: int, support: int, query: int, extra: int, seed: int
) -> None:
    spec = WindowTaskSpec(
        window=window, horizon=horizon, support=support, query=query, partial=True
    )
    n = spec.support_span + 1 + extra
    v = np.random.default_rng(seed).normal(size=n)
    assert spec.span == spec.support_span + 1  # S + 1 points suffice for a task
    a = SeriesPool([v], spec).sample(16, np.random.default_rng(0))
    assert a.start.max() <= extra
    # perturb everything from the end of the first task's support on: its support is unmoved
    s0 = int(a.start[0])
    w = v.copy()
    w[s0 + spec.support_span :] += 1000.0
    b = SeriesPool([w], spec).sample(16, np.random.default_rng(0))
    assert b.start[0] == s0
    np.testing.assert_array_equal(a.support_x[0], b.support_x[0])
    np.testing.assert_array_equal(a.support_y[0], b.support_y[0])
    assert (a.loc[0], a.scale[0]) == (b.loc[0], b.scale[0])
    # the unobserved support targets are exactly those past the stretch
    i, h = np.meshgrid(np.arange(support), np.arange(horizon), indexing="ij")
    np.testing.assert_array_equal(np.isnan(a.support_y[0]), i + window + h >= spec.support_span)
    # query: NaN exactly past the series end; every task has >= 1 observed query target
    j, hq = np.meshgrid(np.arange(query), np.arange(horizon), indexing="ij")
    for k in range(16):
        past_end = int(a.start[k]) + spec.support_span + j + hq >= n
        np.testing.assert_array_equal(np.isnan(a.query_y[k]), past_end)
        assert np.isfinite(a.query_y[k, 0, 0]) and np.isfinite(a.query_x[k]).all()


def test_series_too_short_are_skipped_and_none_long_enough_is_an_error() -> None:
    spec = WindowTaskSpec(window=4, horizon=3, support=3, query=2, partial=True)
    pool = SeriesPool([np.ones(7), np.arange(8.0), np.arange(10.0)], spec)
    assert pool.n_starts.tolist() == [0, 1, 3]
    with pytest.raises(InputError, match="8 points"):
        SeriesPool([np.ones(7)], spec)


def test_recent_partial_support_ends_at_the_last_value_and_round_trips() -> None:
    v = np.arange(50, dtype=np.float64) ** 1.5
    spec = WindowTaskSpec(window=7, horizon=3, support=10, query=0, partial=True)
    t = recent_support(v, spec)
    assert t.start[0] == 50 - 17
    last = t.support_y[0, -1]
    np.testing.assert_allclose(last[0] * t.scale[0] + t.loc[0], v[-1], rtol=1e-6)
    assert np.isnan(last[1:]).all()
    with pytest.raises(InputError, match="K \\+ L = 17"):
        recent_support(v[:16], spec)
    assert WindowTaskSpec.from_dict(spec.to_dict()) == spec
    old = {"window": 7, "horizon": 3, "support": 10, "query": 0}  # written before `partial`
    assert WindowTaskSpec.from_dict(old) == WindowTaskSpec(**old)
    assert WindowTaskSpec.from_dict(old).partial is False
