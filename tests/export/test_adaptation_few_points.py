"""Adaptation from few points: partial support pairs, calibration on what is left, the prior.

Oracles: :func:`mamlctl.maml.engine.adapt` with the masked loss on
:func:`mamlctl.timeseries.windows.recent_support` of the partial spec (one series at a time), a
twin adapted by hand on the K points before the series' own tail with
:func:`mamlctl.timeseries.anomaly.calibrate` on its residuals, and the stored prior by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from mamlctl.maml import adaptation as ad
from mamlctl.maml.calibration import MIN_CALIBRATION, prior_from_residuals
from mamlctl.maml.engine import adapt
from mamlctl.maml.initializer import Initializer
from mamlctl.maml.models import MLPConfig, build_model, masked_mse_loss
from mamlctl.timeseries.anomaly import calibrate, score_from_z
from mamlctl.timeseries.windows import WindowTaskSpec, recent_support

L, H, P = 24, 6, 12
K = L + P  # the new default: one window plus one period of origins -> K - L = 12 pairs
PRIOR = {"residual_scale_rel": 0.25, "threshold": 0.999}


def _initializer(prior: dict[str, float] | None = PRIOR) -> Initializer:
    config = MLPConfig(input_size=L, output_size=H, hidden=(16, 16))
    torch.manual_seed(0)
    model = build_model(config)
    train: dict[str, Any] = {"inner_steps": 2, "inner_lr": 0.05}
    if prior is not None:
        train["calibration_prior"] = prior
    return Initializer(
        model_config=config,
        params={k: v.detach() for k, v in model.state_dict().items()},
        task_spec={
            "kind": "window",
            "window": L,
            "horizon": H,
            "support": K - L,
            "query": 8,
            "partial": True,
        },
        train_config=train,
    )


def _series(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10.0 + seed + (1 + seed) * np.sin(2 * np.pi * t / P + seed) + rng.normal(0, 0.2, n)


def _plan(init: Initializer) -> ad.AdaptPlan:
    return ad.plan_adaptation(
        init, window=L, horizon=H, support=999, period=P, config=ad.AdaptConfig()
    )


def _by_hand(init: Initializer, values: np.ndarray) -> tuple[Any, dict[str, torch.Tensor]]:
    spec = WindowTaskSpec(window=L, horizon=H, support=K - L, query=0, partial=True)
    task = recent_support(values, spec)
    params = adapt(
        init.model(),
        dict(init.params),
        torch.from_numpy(task.support_x[0]),
        torch.from_numpy(task.support_y[0]),
        steps=2,
        inner_lr=0.05,
        loss_fn=masked_mse_loss,
        create_graph=False,
    )
    return task, params


def test_plan_reads_the_partial_spec_and_the_prior() -> None:
    plan = _plan(_initializer())
    assert (plan.support, plan.pairs, plan.partial, plan.min_points) == (K, K - L, True, K)
    assert plan.calibration == 24 and plan.full_points == K + 24
    assert plan.prior.residual_scale_rel == 0.25 and plan.prior.threshold == 0.999
    doc = plan.as_dict()
    assert doc["partial"] is True and doc["calibration_prior"] == PRIOR
    assert doc["min_calibration"] == MIN_CALIBRATION


def test_series_adapt_on_k_points_and_calibrate_on_what_is_left_or_the_prior() -> None:
    """One vectorised call over a full-C series, two with fewer calibration points, and two
    with fewer than MIN_CALIBRATION (prior); each equals its one-series reference."""
    init = _initializer()
    plan = _plan(init)
    c = plan.calibration
    lengths = [K + c + 30, K + 11, K + MIN_CALIBRATION, K + MIN_CALIBRATION - 1, K]
    histories = [_series(n, i) for i, n in enumerate(lengths)]
    result = ad.adapt_histories(init, histories, plan=plan)
    assert result.calibration_points.tolist() == [c, 11, MIN_CALIBRATION, 0, 0]
    assert result.calibrated.tolist() == [True, True, True, False, False]
    model = init.model()
    for i, values in enumerate(histories):
        task, ref = _by_hand(init, values)
        for name, value in ref.items():
            np.testing.assert_allclose(result.params[name][i], value.numpy(), atol=2e-6)
        assert result.loc[i] == task.loc[0] and result.scale[i] == task.scale[0]
        own = min(c, len(values) - K)
        if own < MIN_CALIBRATION:  # the stored prior, by hand
            assert result.residual_scale[i] == pytest.approx(0.25 * task.scale[0], rel=1e-12)
            assert result.threshold[i] == 0.999
            assert np.isnan(result.calibration_mae_adapted[i])
            continue
        # the twin: adapted on the K points before the series' own `own` tail points
        twin_task, twin = _by_hand(init, values[: len(values) - own])
        tail = values[len(values) - own - L :]
        windows = np.stack([tail[j : j + L] for j in range(own)])
        z = (windows - twin_task.loc[0]) / twin_task.scale[0]
        with torch.no_grad():
            out = torch.func.functional_call(model, twin, (torch.from_numpy(z.astype(np.float32)),))
        forecast = out[:, 0].double().numpy() * twin_task.scale[0] + twin_task.loc[0]
        residuals = values[len(values) - own :] - forecast
        ref_cal = calibrate(residuals, min_scale=1e-3 * task.scale[0])
        assert result.residual_scale[i] == pytest.approx(ref_cal.scale, rel=1e-5)
        assert result.threshold[i] == pytest.approx(ref_cal.threshold, rel=1e-6)
        np.testing.assert_allclose(
            result.calibration_mae_adapted[i], np.abs(residuals).mean(), rtol=1e-5
        )
    assert np.all(result.support_loss_after < result.support_loss_before)


def test_an_old_initializer_without_a_prior_falls_back_to_one_scale_and_min_z() -> None:
    init = _initializer(prior=None)
    plan = _plan(init)
    values = _series(K + 2, 3)
    result = ad.adapt_histories(init, [values], plan=plan)
    task, _ = _by_hand(init, values)
    assert result.residual_scale[0] == pytest.approx(1.0 * task.scale[0], rel=1e-12)
    assert result.threshold[0] == pytest.approx(float(score_from_z(3.0)), rel=1e-12)
    assert ad.summarise(result)["calibrated_fraction"] == 0.0


def test_ragged_calibration_equals_anomaly_calibrate_on_each_rows_points() -> None:
    plan = _plan(_initializer())
    rng = np.random.default_rng(5)
    residuals = rng.standard_t(3, size=(6, 24)) * rng.uniform(0.1, 10, (6, 1))
    counts = [24, 8, 9, 15, 23, 10]
    for i, n in enumerate(counts):
        residuals[i, n:] = np.nan
    rscale, thr = ad._calibrate(residuals, None, floor=np.full(6, 1e-3), plan=plan)
    for i, n in enumerate(counts):
        ref = calibrate(residuals[i, :n], false_alarm_rate=0.005, min_z=3.0, min_scale=1e-3)
        assert rscale[i] == pytest.approx(ref.scale, rel=1e-12)
        assert thr[i] == pytest.approx(ref.threshold, rel=1e-12)


def test_the_prior_is_anomaly_calibrate_on_pooled_residuals_in_support_scale_units() -> None:
    rng = np.random.default_rng(2)
    scale = np.array([1.0, 10.0, 100.0])
    residuals = rng.normal(0, 0.3, (3, 40)) * scale[:, None]
    residuals[1, 30:] = np.nan
    prior = prior_from_residuals(residuals, scale)
    pooled = (residuals / scale[:, None]).ravel()
    ref = calibrate(pooled[np.isfinite(pooled)], min_scale=1e-3)
    assert prior.residual_scale_rel == pytest.approx(ref.scale, rel=1e-12)
    assert prior.threshold == pytest.approx(ref.threshold, rel=1e-12)
    assert 0.2 < prior.residual_scale_rel < 0.4  # ~ the 0.3 generating sigma
