"""The pure half of the train stage: defaults, the held-out split, the fingerprint and the
validation set (no MLflow, no torch training)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.domain import Family, Series
from mamlctl.errors import ConfigError, TrainingError
from mamlctl.maml.family_data import MIN_SERIES, fingerprint, make_config, prepare, resolve

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
    assert plan.support_pairs == 20 - 8 - 3 + 1
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


def test_support_shorter_than_window_plus_horizon_is_rejected() -> None:
    with pytest.raises(ConfigError, match="K must be >= L \\+ H = 11"):
        resolve(FAMILY, make_config(support=10))


def test_too_few_or_too_short_series_are_training_errors() -> None:
    plan = resolve(FAMILY, make_config())
    with pytest.raises(TrainingError, match=f"at least {MIN_SERIES}"):
        prepare(FAMILY, _series(MIN_SERIES - 1), plan)
    with pytest.raises(TrainingError, match="0 series with the"):
        prepare(FAMILY, _series(6, n_points=plan.task_span - 1), plan)


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
        # last support pair: x = stretch[-11:-3], y = stretch[-3:] (normalised)
        np.testing.assert_allclose(val.support_x[i, -1], (stretch[-11:-3] - loc) / scale, 1e-5)
        np.testing.assert_allclose(val.support_y[i, -1], (stretch[-3:] - loc) / scale, 1e-5)
        np.testing.assert_allclose(val.query_x[i, 0], (values[:-3][-8:] - loc) / scale, 1e-5)
