"""Window tasks: hand-indexed oracle, support-only normalisation, no query leakage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.errors import InputError
from mamlctl.maml.tasks import WindowTaskSampler
from mamlctl.timeseries.scaling import support_stats
from mamlctl.timeseries.windows import (
    SeriesPool,
    WindowTaskSpec,
    normalise_window,
    recent_support,
    sample_window_tasks,
)


def _hand_task(v: np.ndarray, s: int, spec: WindowTaskSpec) -> dict[str, np.ndarray]:
    """Oracle: the definition in the module docstring, written with plain loops."""
    L, H, K, Q = spec.window, spec.horizon, spec.support, spec.query
    sx = [v[s + i : s + i + L] for i in range(K)]
    sy = [v[s + i + L : s + i + L + H] for i in range(K)]
    q = s + K + H - 1
    qx = [v[q + j : q + j + L] for j in range(Q)]
    qy = [v[q + j + L : q + j + L + H] for j in range(Q)]
    raw = v[s : s + K + L + H - 1]
    loc, scale = raw.mean(), max(raw.std(), 1e-3 * max(1.0, abs(raw.mean())))
    return {
        "support_x": (np.array(sx) - loc) / scale,
        "support_y": (np.array(sy) - loc) / scale,
        "query_x": (np.array(qx) - loc) / scale,
        "query_y": (np.array(qy) - loc) / scale,
        "loc": np.array(loc),
        "scale": np.array(scale),
    }


def test_sampled_tasks_equal_the_hand_indexed_definition() -> None:
    rng = np.random.default_rng(0)
    series = [rng.normal(5, 2, n).cumsum() for n in (60, 200, 35)]
    spec = WindowTaskSpec(window=6, horizon=3, support=5, query=4)
    tasks = sample_window_tasks(series, spec, 50, np.random.default_rng(1))
    assert tasks.support_x.shape == (50, 5, 6) and tasks.query_y.shape == (50, 4, 3)
    assert tasks.support_x.dtype == np.float32
    for i in range(50):
        ref = _hand_task(series[tasks.series_index[i]], int(tasks.start[i]), spec)
        for key in ("support_x", "support_y", "query_x", "query_y"):
            np.testing.assert_allclose(getattr(tasks, key)[i], ref[key], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(tasks.loc[i], ref["loc"])
        np.testing.assert_allclose(tasks.scale[i], ref["scale"])


@settings(max_examples=40, deadline=None)
@given(
    window=st.integers(1, 8),
    horizon=st.integers(1, 4),
    support=st.integers(1, 8),
    query=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_query_values_never_leak_into_support_or_its_statistics(
    window: int, horizon: int, support: int, query: int, seed: int
) -> None:
    spec = WindowTaskSpec(window=window, horizon=horizon, support=support, query=query)
    rng = np.random.default_rng(seed)
    v = rng.normal(size=spec.span)
    a = sample_window_tasks([v], spec, 1, np.random.default_rng(0))
    # Change every value that is a query *target*: nothing the model adapts on may move.
    first_target = spec.query_offset + window
    w = v.copy()
    w[first_target:] += 1000.0
    b = sample_window_tasks([w], spec, 1, np.random.default_rng(0))
    assert a.start[0] == b.start[0] == 0
    np.testing.assert_array_equal(a.support_x, b.support_x)
    np.testing.assert_array_equal(a.support_y, b.support_y)
    assert a.loc[0] == b.loc[0] and a.scale[0] == b.scale[0]
    # Support statistics are those of the support's raw points only.
    loc, scale = support_stats(v[: spec.support_span])
    assert a.loc[0] == pytest.approx(loc) and a.scale[0] == pytest.approx(scale)
    # And the query targets do follow the support targets in time.
    assert first_target >= spec.support_span


def test_recent_support_ends_at_the_last_value() -> None:
    v = np.arange(100, dtype=np.float64) ** 1.5
    spec = WindowTaskSpec(window=7, horizon=2, support=10, query=3)
    t = recent_support(v, spec)
    assert t.support_x.shape == (1, 10, 7) and t.query_x.shape == (1, 0, 7)
    raw_last_target = t.support_y[0, -1, -1] * t.scale[0] + t.loc[0]
    assert raw_last_target == pytest.approx(v[-1], rel=1e-6)
    assert t.start[0] == 100 - spec.support_span
    window = normalise_window(v[-7:], t.loc[0], t.scale[0])
    np.testing.assert_allclose(window * t.scale[0] + t.loc[0], v[-7:], rtol=1e-6)


def test_sampling_is_uniform_over_stretches_and_skips_short_series() -> None:
    spec = WindowTaskSpec(window=4, horizon=1, support=3, query=2)
    series = [np.ones(spec.span - 1), np.arange(spec.span + 99.0), np.arange(spec.span + 9.0)]
    pool = SeriesPool(series, spec)
    tasks = pool.sample(22_000, np.random.default_rng(0))
    counts = np.bincount(tasks.series_index, minlength=3)
    assert counts[0] == 0
    assert counts[1] / counts[2] == pytest.approx(100 / 10, rel=0.1)
    assert tasks.start.min() == 0 and tasks.start[tasks.series_index == 2].max() == 9


def test_bad_inputs_raise_input_error() -> None:
    spec = WindowTaskSpec(window=4, horizon=1, support=3, query=2)
    with pytest.raises(InputError, match="points a window task needs"):
        sample_window_tasks([np.ones(5)], spec, 3, np.random.default_rng(0))
    with pytest.raises(InputError, match="NaN"):
        sample_window_tasks([np.array([1.0, np.nan] * 20)], spec, 3, np.random.default_rng(0))
    with pytest.raises(InputError, match="adapting needs"):
        recent_support(np.ones(3), spec)
    with pytest.raises(InputError):
        WindowTaskSpec(window=0, horizon=1, support=1, query=1)
    with pytest.raises(InputError, match="unknown keys"):
        WindowTaskSpec.from_dict({"window": 1, "horizon": 1, "support": 1, "query": 1, "x": 2})


def test_window_sampler_gives_float32_tensors() -> None:
    spec = WindowTaskSpec(window=5, horizon=2, support=4, query=3)
    sampler = WindowTaskSampler([np.sin(np.arange(80.0))], spec, seed=0)
    batch = sampler.sample(6)
    assert batch.support_x.dtype == torch.float32
    assert tuple(batch.query_y.shape) == (6, 3, 2)
    assert sampler.spec() == {"kind": "window", **spec.to_dict()}
