"""The pure half of the train stage: defaults, the held-out split, the fingerprint and the
validation set (no MLflow, no torch training)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.domain import Family, Series
from mamlctl.errors import ConfigError, TrainingError
from mamlctl.maml.family_data import MIN_SERIES, make_config, resolve
from mamlctl.maml.family_split import fingerprint, prepare

FAMILY = Family(name="syn", period=6, interval_seconds=3600.0, window=8, horizon=3, support=20)


def _series(n_series: int, n_points: int = 80) -> list[Series]:
    rng = np.random.default_rng(0)
    t = np.arange(n_points)
    return [
        Series(
            series_id=f"id{i}",
            values=5.0 + np.sin(2 * np.pi * t / 6 + i) + 0.1 * rng.standard_normal(n_points),
        )
        for i in range(n_series)
    ]


def test_defaults_come_from_the_family() -> None:
    plan = resolve(FAMILY, make_config())
    assert (plan.window, plan.horizon, plan.support_points) == (8, 3, 20)
    assert plan.partial and plan.support_pairs == 20 - 8  # partial pairs: K - L origins
    assert plan.task_span == 20 + 1  # K support points + the first query target
    assert plan.task_spec().partial
    full = resolve(FAMILY, make_config(partial=False))  # the older full-pair form
    assert not full.partial and full.support_pairs == 20 - 8 - 3 + 1
    assert full.task_span == (20 - 8 - 3 + 1) + 3 - 1 + 8 + 8 + 3 - 1
    assert plan.query == max(3, 6, 8)
    assert plan.season == 6
    assert plan.hidden == (40, 40)
    assert plan.task_spec().support == plan.support_pairs
    nocycle = resolve(
        Family(name="n", period=None, interval_seconds=None, window=64, horizon=4, support=80),
        make_config(),
    )
    assert (nocycle.season, nocycle.hidden) == (1, (64, 64))


def test_recipe_defaults_seasonal_skip_mae_and_nonnegative_auto() -> None:
    plan = resolve(FAMILY, make_config())
    assert plan.season_skip == 6 and plan.model_config().season_skip == 6
    assert plan.loss == "mae" and plan.meta_config().loss == "mae"
    assert resolve(FAMILY, make_config(head="gaussian")).meta_config().loss == "gaussian_nll"
    assert resolve(FAMILY, make_config(loss="mse")).meta_config().loss == "mse"
    assert resolve(FAMILY, make_config(season_skip=0)).model_config().season_skip == 0
    # no cycle -> naive (m = 1); a period longer than the window -> naive too
    nocycle = Family(name="n", period=None, interval_seconds=None, window=8, horizon=3, support=20)
    long = Family(name="p", period=12, interval_seconds=None, window=8, horizon=3, support=24)
    assert resolve(nocycle, make_config()).season_skip == 1
    assert resolve(long, make_config()).season_skip == 1
    with pytest.raises(ConfigError, match="season-skip 9 exceeds the window L=8"):
        resolve(FAMILY, make_config(season_skip=9))
    # auto non-negative: decided by the training series; an explicit choice wins
    positive = _series(8)
    assert prepare(FAMILY, positive, plan).plan.nonnegative is True
    shifted = [Series(series_id=s.series_id, values=s.values - 5.5) for s in positive]
    assert prepare(FAMILY, shifted, plan).plan.nonnegative is False
    forced = resolve(FAMILY, make_config(nonnegative=False))
    assert prepare(FAMILY, positive, forced).plan.nonnegative is False
    stored = prepare(FAMILY, positive, plan).plan.initializer_train_config()
    assert (stored["loss"], stored["nonnegative"]) == ("mae", True)
    assert stored["adapt_scope"] == "all" and stored["adapt_names"] is None
    head = resolve(FAMILY, make_config(adapt_scope="head"))
    assert head.meta_config().adapt_names == ("layers.2.weight", "layers.2.bias")
    assert head.initializer_train_config()["adapt_scope"] == "head"


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"loss": "huber"}, "loss"),
        ({"season_skip": -1}, "season_skip"),
        ({"inner_lr": -1.0}, "inner_lr"),
        ({"meta_batch": 0}, "meta_batch"),
        ({"architecture": "rnn"}, "architecture"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_hyperparameters_are_one_line_config_errors(
    values: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        make_config(**values)
    assert "\n" not in str(info.value)


def test_support_must_hold_the_window_plus_one_point() -> None:
    with pytest.raises(ConfigError, match="K counts the window, so K must be >= L \\+ 1 = 9"):
        resolve(FAMILY, make_config(support=8))
    assert resolve(FAMILY, make_config(support=9)).support_pairs == 1
    with pytest.raises(ConfigError, match="full pairs: K must be >= L \\+ H = 11"):
        resolve(FAMILY, make_config(support=10, partial=False))


def test_fewer_than_min_series_hold_out_in_time_and_too_short_is_a_training_error() -> None:
    """1-3 series: every series' last H points are validation targets, training sees only the
    points before them; impossible even so: one line saying how many points are needed."""
    plan = resolve(FAMILY, make_config())
    series = _series(MIN_SERIES - 1, n_points=40)
    data = prepare(FAMILY, series, plan)
    assert data.plan.holdout == "time"
    assert data.plan.initializer_train_config()["holdout"] == "time"
    assert data.validation.series_ids == tuple(s.series_id for s in series)
    for s, t, actual in zip(series, data.train, data.validation.actual, strict=True):
        np.testing.assert_array_equal(t.values, s.values[:-3])  # never the validation targets
        np.testing.assert_array_equal(actual, s.values[-3:])
    # by series as before from MIN_SERIES on
    assert prepare(FAMILY, _series(MIN_SERIES), plan).plan.holdout == "series"
    # need: max(K + 1 + H, max(K, m + 1) + H) = 24 points
    assert plan.time_holdout_span == 24
    assert prepare(FAMILY, _series(1, n_points=24), plan).plan.holdout == "time"
    # by series needs max(K + 1, K + H) = 23 points a series: 6 series of 22 have neither
    assert max(plan.task_span, plan.validation_span) == 23
    with pytest.raises(TrainingError, match="no series with the 24 points training needs") as e:
        prepare(FAMILY, _series(6, n_points=22), plan)
    assert "\n" not in str(e.value) and "longest has 22 points" in str(e.value)


@settings(max_examples=25, deadline=None)
@given(st.permutations(list(range(12))), st.integers(min_value=0, max_value=5))
def test_holdout_is_deterministic_whatever_the_order_and_seed(order: list[int], seed: int) -> None:
    series = _series(12)
    reference = prepare(FAMILY, series, resolve(FAMILY, make_config()))
    shuffled = prepare(FAMILY, [series[i] for i in order], resolve(FAMILY, make_config(seed=seed)))
    assert set(shuffled.validation.series_ids) == set(reference.validation.series_ids)
    assert shuffled.fingerprint == reference.fingerprint
    held = set(reference.validation.series_ids)
    assert len(held) == round(0.15 * 12)
    assert held.isdisjoint(s.series_id for s in reference.train)
    assert len(reference.train) + len(held) == 12


def test_fingerprint_sees_every_value() -> None:
    series = _series(4)
    changed = [*series[:3], Series(series_id="id3", values=series[3].values.copy())]
    assert fingerprint(changed) == fingerprint(series)
    changed[3].values[17] += 1e-12
    assert fingerprint(changed) != fingerprint(series)


def test_validation_set_forecasts_the_last_h_points_from_k_newest_history_points() -> None:
    series = _series(8)
    data = prepare(FAMILY, series, resolve(FAMILY, make_config()))
    val = data.validation
    by_id = {s.series_id: s.values for s in series}
    for i, sid in enumerate(val.series_ids):
        values = by_id[sid]
        np.testing.assert_array_equal(val.actual[i], values[-3:])
        np.testing.assert_array_equal(val.histories[i], values[:-3])
        stretch = values[:-3][-20:]
        loc, scale = stretch.mean(), stretch.std()
        assert val.loc[i] == pytest.approx(loc) and val.scale[i] == pytest.approx(scale)
        # partial pairs: 12 origins; the last: x = stretch[-9:-1], y = (stretch[-1], NaN, NaN)
        assert val.support_x.shape[1] == 12
        np.testing.assert_allclose(val.support_x[i, -1], (stretch[-9:-1] - loc) / scale, 1e-5)
        assert val.support_y[i, -1, 0] == pytest.approx((stretch[-1] - loc) / scale, rel=1e-5)
        assert np.isnan(val.support_y[i, -1, 1:]).all()
        np.testing.assert_allclose(val.support_y[i, -3], (stretch[-3:] - loc) / scale, 1e-5)
        np.testing.assert_allclose(val.query_x[i, 0], (values[:-3][-8:] - loc) / scale, 1e-5)
    # full pairs (older initializers): the last pair is x = stretch[-11:-3], y = stretch[-3:]
    full = prepare(FAMILY, series, resolve(FAMILY, make_config(partial=False))).validation
    stretch = by_id[full.series_ids[0]][:-3][-20:]
    loc, scale = stretch.mean(), stretch.std()
    np.testing.assert_allclose(full.support_x[0, -1], (stretch[-11:-3] - loc) / scale, 1e-5)
    np.testing.assert_allclose(full.support_y[0, -1], (stretch[-3:] - loc) / scale, 1e-5)
