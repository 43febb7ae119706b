"""The adaptation stage: vectorised across series, equal to the one-series reference.

Oracles: :func:`mamlctl.maml.engine.adapt` on :func:`mamlctl.timeseries.windows.recent_support`
(one series at a time), and :func:`mamlctl.timeseries.anomaly.calibrate` per series.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.errors import InputError, TrainingError
from mamlctl.maml import adaptation as ad
from mamlctl.maml.engine import adapt
from mamlctl.maml.initializer import Initializer
from mamlctl.maml.models import MLPConfig, build_model, mse_loss
from mamlctl.timeseries.anomaly import calibrate
from mamlctl.timeseries.windows import WindowTaskSpec, recent_support

L, H, K = 24, 6, 60


def _initializer(head: str = "mean") -> Initializer:
    config = MLPConfig(input_size=L, output_size=H, hidden=(16, 16), head=head)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = build_model(config)
    return Initializer(
        model_config=config,
        params={k: v.detach() for k, v in model.state_dict().items()},
        task_spec={"kind": "window", "window": L, "horizon": H, "support": K - L - H + 1},
        train_config={"inner_steps": 3, "inner_lr": 0.05},
    )


def _histories(n: int, length: int = 200) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(length)
    return [
        50.0 * i + (1 + i) * np.sin(2 * np.pi * t / 24 + i) + rng.normal(0, 0.1, length)
        for i in range(n)
    ]


def _plan(init: Initializer, **kw: Any) -> ad.AdaptPlan:
    return ad.plan_adaptation(
        init, window=L, horizon=H, support=K, period=24, config=ad.AdaptConfig(**kw)
    )


def _by_hand(
    init: Initializer,
    values: np.ndarray,
    pairs: int,
    *,
    steps: int,
    loss_fn: Any,
    adapt_names: tuple[str, ...] | None = None,
) -> tuple[Any, dict[str, torch.Tensor]]:
    """The one-series oracle: ``(task, params)`` of :func:`adapt` on ``recent_support``."""
    task = recent_support(values, WindowTaskSpec(window=L, horizon=H, support=pairs, query=0))
    params = adapt(
        init.model(),
        dict(init.params),
        torch.from_numpy(task.support_x[0]),
        torch.from_numpy(task.support_y[0]),
        steps=steps,
        inner_lr=0.05,
        loss_fn=loss_fn,
        create_graph=False,
        adapt_names=adapt_names,
    )
    return task, params


def test_plan_mirrors_meta_training() -> None:
    plan = _plan(_initializer())
    assert (plan.support, plan.pairs, plan.steps, plan.inner_lr) == (60, 31, 3, 0.05)
    assert plan.calibration == 24 and plan.loss == "mse"
    overridden = _plan(_initializer("gaussian"), steps=7, inner_lr=0.2, calibration=30)
    assert (overridden.steps, overridden.inner_lr, overridden.calibration) == (7, 0.2, 30)
    assert overridden.loss == "gaussian_nll"


def test_recipe_initializer_adapts_on_mae_and_clips_calibration_forecasts_at_zero() -> None:
    """An initializer recording loss=mae and nonnegative: adaptation steps follow MAE (a
    by-hand reference) and the calibration residuals are those of forecasts clipped at 0."""
    from mamlctl.maml.models import mae_loss

    config = MLPConfig(input_size=L, output_size=H, hidden=(16,), season_skip=24)
    torch.manual_seed(0)
    model = build_model(config)
    init = Initializer(
        model_config=config,
        params={k: v.detach() for k, v in model.state_dict().items()},
        task_spec={"kind": "window", "window": L, "horizon": H, "support": K - L - H + 1},
        train_config={"inner_steps": 2, "inner_lr": 0.05, "loss": "mae", "nonnegative": True},
    )
    plan = _plan(init)
    assert (plan.loss, plan.nonnegative) == ("mae", True)
    assert plan.as_dict()["nonnegative"] is True
    # written before the window-minimum bound was recorded: the clip at 0 it was trained with
    assert (plan.floor_fraction, plan.as_dict()["floor_fraction"]) == (0.0, 0.0)
    old = _plan(_initializer())  # written before the recipe: MSE, no clip
    assert (old.loss, old.nonnegative) == ("mse", False)

    # series that touch 0 often: a clipped forecast differs from the raw one there
    rng = np.random.default_rng(1)
    t = np.arange(200)
    histories = [np.maximum(0.0, np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, 200))]
    result = ad.adapt_histories(init, histories, plan=plan)
    _, ref = _by_hand(init, histories[0], plan.pairs, steps=2, loss_fn=mae_loss)
    for name, value in ref.items():
        np.testing.assert_allclose(result.params[name][0], value.numpy(), atol=2e-6)

    # calibration oracle: the twin adapted without the last C points, forecasts clipped at 0
    c, k = plan.calibration, plan.support
    tail = histories[0][-(k + c) :]
    twin_task, twin = _by_hand(init, tail[:k], plan.pairs, steps=2, loss_fn=mae_loss)
    loc, scale = twin_task.loc[0], twin_task.scale[0]
    windows = np.stack([tail[j : j + L] for j in range(k - L, k - L + c)])
    z = torch.from_numpy(((windows - loc) / scale).astype(np.float32))
    with torch.no_grad():
        raw = torch.func.functional_call(init.model(), twin, (z,))[:, 0].double().numpy()
    forecast = np.maximum(raw * scale + loc, 0.0)
    assert (raw * scale + loc < 0).any()  # the clip acts on this series
    mae = np.abs(tail[k:] - forecast).mean()
    np.testing.assert_allclose(result.calibration_mae_adapted[0], mae, rtol=1e-5)

    # an initializer recording floor_fraction: calibration forecasts are bounded by that
    # fraction of each one-step window's minimum (same twin, same windows, shifted series)
    shifted = init.train_config | {"floor_fraction": 1.0}
    floored = Initializer(
        model_config=config, params=init.params, task_spec=init.task_spec, train_config=shifted
    )
    fplan = _plan(floored)
    assert (fplan.floor_fraction, fplan.as_dict()["floor_fraction"]) == (1.0, 1.0)
    lift = 5.0  # every value >= 5: the clip at 0 would never act, the window minimum does
    res = ad.adapt_histories(floored, [histories[0] + lift], plan=fplan)
    up = windows + lift
    zf = torch.from_numpy(((up - (loc + lift)) / scale).astype(np.float32))
    with torch.no_grad():
        rawf = torch.func.functional_call(init.model(), twin, (zf,))[:, 0].double().numpy()
    unbounded = rawf * scale + loc + lift
    bound = np.maximum(up.min(axis=1), 0.0)
    assert (unbounded < bound).any() and (unbounded > bound).any()
    mae = np.abs(tail[k:] + lift - np.maximum(unbounded, bound)).mean()
    np.testing.assert_allclose(res.calibration_mae_adapted[0], mae, rtol=1e-5)


def test_head_scope_adapts_the_last_layer_only_and_keeps_the_body_as_views() -> None:
    """adapt_scope=head (stored with the initializer, or overridden): the head equals a by-hand
    head-only adaptation, the body is theta bit for bit and is not copied per series."""
    init = _initializer()
    stored = Initializer(
        model_config=init.model_config,
        params=init.params,
        task_spec=init.task_spec,
        train_config={**init.train_config, "adapt_scope": "head"},
    )
    plan = _plan(stored)
    assert plan.adapt_scope == "head" and _plan(init).adapt_scope == "all"
    assert _plan(init, adapt_scope="head").adapt_scope == "head"
    histories = _histories(4)
    result = ad.adapt_histories(stored, histories, plan=plan)
    head = ("layers.2.weight", "layers.2.bias")
    _, ref = _by_hand(init, histories[1], plan.pairs, steps=3, loss_fn=mse_loss, adapt_names=head)
    for name, value in ref.items():
        np.testing.assert_allclose(result.params[name][1], value.numpy(), atol=2e-6)
        if name not in head:
            np.testing.assert_array_equal(result.params[name][1], init.params[name].numpy())
            assert result.params[name].strides[0] == 0  # a view of theta, not N copies
        else:
            assert not np.array_equal(result.params[name][1], init.params[name].numpy())


def test_plan_rejects_a_family_the_initializer_does_not_fit() -> None:
    with pytest.raises(TrainingError, match="retrain"):
        ad.plan_adaptation(
            _initializer(), window=48, horizon=H, support=K, period=24, config=ad.AdaptConfig()
        )


def test_support_tasks_equal_recent_support() -> None:
    values = _histories(3)[2]
    x, y, loc, scale = ad.support_tasks(values[None, -K:], window=L, horizon=H)
    ref = recent_support(
        values, WindowTaskSpec(window=L, horizon=H, support=K - L - H + 1, query=0)
    )
    np.testing.assert_array_equal(x, ref.support_x)
    np.testing.assert_array_equal(y, ref.support_y)
    np.testing.assert_array_equal(loc, ref.loc)
    np.testing.assert_array_equal(scale, ref.scale)


def test_batched_adaptation_equals_one_series_at_a_time() -> None:
    init = _initializer()
    plan = _plan(init)
    histories = _histories(5)
    result = ad.adapt_histories(init, histories, plan=plan)
    for i in (0, 4):
        task, ref = _by_hand(init, histories[i], plan.pairs, steps=3, loss_fn=mse_loss)
        for name, value in ref.items():
            np.testing.assert_allclose(result.params[name][i], value.numpy(), atol=2e-6)
        assert result.loc[i] == task.loc[0] and result.scale[i] == task.scale[0]
    # Adaptation lowers every series' support loss.
    assert np.all(result.support_loss_after < result.support_loss_before)


def test_calibration_equals_anomaly_calibrate_per_series() -> None:
    init = _initializer()
    plan = _plan(init)
    rng = np.random.default_rng(3)
    residuals = rng.standard_t(3, size=(20, plan.calibration)) * rng.uniform(0.1, 10, (20, 1))
    floor = np.full(20, 1e-3)
    rscale, thr = ad._calibrate(residuals, None, floor=floor, plan=plan)
    for i in range(20):
        ref = calibrate(residuals[i], false_alarm_rate=0.005, min_z=3.0, min_scale=1e-3)
        assert rscale[i] == pytest.approx(ref.scale, rel=1e-12)
        assert thr[i] == pytest.approx(ref.threshold, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(far=st.floats(0.001, 0.3), min_z=st.floats(0.0, 5.0), seed=st.integers(0, 1000))
def test_calibration_matches_reference_for_any_settings(
    far: float, min_z: float, seed: int
) -> None:
    plan = ad.AdaptPlan(
        window=L,
        horizon=H,
        support=K,
        pairs=31,
        calibration=24,
        steps=1,
        inner_lr=0.1,
        loss="mse",
        false_alarm_rate=far,
        min_z=min_z,
        chunk_size=8,
    )
    r = np.random.default_rng(seed).normal(0, 2, (3, 24))
    rscale, thr = ad._calibrate(r, None, floor=np.full(3, 1e-6), plan=plan)
    for i in range(3):
        ref = calibrate(r[i], false_alarm_rate=far, min_z=min_z, min_scale=1e-6)
        assert (rscale[i], thr[i]) == pytest.approx((ref.scale, ref.threshold), rel=1e-12)


def test_calibration_is_out_of_sample_and_flags_a_spike() -> None:
    """The threshold is calibrated on points no adaptation saw; a 10-sigma spike is flagged."""
    from mamlctl.timeseries.anomaly import anomaly_score

    init = _initializer()
    result = ad.adapt_histories(init, _histories(4), plan=_plan(init))
    assert np.all(result.residual_scale > 0) and np.all(result.threshold >= 0.9973)
    spike = anomaly_score(10 * result.residual_scale, result.residual_scale)
    assert np.all(spike >= result.threshold)


def test_gaussian_head_adapts_and_calibrates_on_predicted_sigma() -> None:
    init = _initializer("gaussian")
    result = ad.adapt_histories(init, _histories(3), plan=_plan(init))
    assert set(result.params) == set(init.params)
    assert np.all(np.isfinite(result.threshold)) and np.all(result.threshold <= 1.0)


def test_too_short_and_non_finite_histories_are_input_errors() -> None:
    init = _initializer()
    plan = _plan(init)
    assert plan.min_points == K  # what adaptation strictly needs; calibration takes what is left
    with pytest.raises(InputError, match=f"adapting needs K = {K}"):
        ad.adapt_histories(init, [np.ones(K - 1)], plan=plan)
    bad = _histories(1)[0].copy()
    bad[-3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ad.adapt_histories(init, [bad], plan=plan)
