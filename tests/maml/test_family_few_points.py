"""A family of three short series trains (held out in time), records its calibration prior, and
its initializer adapts a series of K + 2 points with that prior.

Oracles: the held-out one-step residuals by hand (engine.adapt with the masked loss on the
validation support, then the model on each one-step window), the prior as
:func:`mamlctl.maml.calibration.prior_from_residuals` of them, and the stored prior by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamlctl.domain import Family, Series
from mamlctl.maml import adaptation as ad
from mamlctl.maml.calibration import prior_from_residuals
from mamlctl.maml.engine import adapt
from mamlctl.maml.family_data import make_config, resolve
from mamlctl.maml.family_split import prepare
from mamlctl.maml.family_training import train_family
from mamlctl.maml.heldout_prior import heldout_one_step_residuals
from mamlctl.maml.initializer import Initializer
from mamlctl.maml.models import build_model, masked_mae_loss

P, L, H = 6, 12, 3
FAMILY = Family(name="tiny", period=P, interval_seconds=3600.0, window=L, horizon=H, support=L + P)


def _series(n: int, i: int) -> Series:
    t = np.arange(n)
    rng = np.random.default_rng(i)
    values = 20.0 + 5 * i + (2 + i) * np.sin(2 * np.pi * t / P + i) + rng.normal(0, 0.3, n)
    return Series(series_id=f"s{i}", values=values)


def test_three_short_series_train_and_their_initializer_adapts_a_k_plus_two_point_series() -> None:
    config = make_config(
        iterations=30, meta_batch=4, validations=1, pretrained_baseline=False, time_budget_s=60.0
    )
    plan = resolve(FAMILY, config)
    # K + 1 + H = 22 points: one task each before the held-out end
    series = [_series(n, i) for i, n in enumerate((22, 26, 30))]
    data = prepare(FAMILY, series, plan)
    assert data.plan.holdout == "time" and data.plan.partial
    result = train_family(data)
    plan, val = result.data.plan, result.data.validation

    # the prior: pooled held-out one-step residuals, by hand for one series
    residuals = heldout_one_step_residuals(plan, result.params, val, steps=plan.config.inner_steps)
    model = build_model(plan.model_config())
    phi = adapt(
        model,
        {k: v.detach() for k, v in result.params.items()},
        torch.from_numpy(val.support_x[1]),
        torch.from_numpy(val.support_y[1]),
        steps=plan.config.inner_steps,
        inner_lr=plan.config.inner_lr,
        loss_fn=masked_mae_loss,
        create_graph=False,
    )
    full = series[1].values
    n = len(full)
    windows = np.stack([full[n - H - L + j : n - H + j] for j in range(H)])
    z = torch.from_numpy(((windows - val.loc[1]) / val.scale[1]).astype(np.float32))
    with torch.no_grad():
        fc = torch.func.functional_call(model, phi, (z,))[:, 0].double().numpy()
    fc = np.maximum(fc * val.scale[1] + val.loc[1], windows.min(axis=1) * plan.bound_fraction)
    np.testing.assert_allclose(residuals[1], full[-H:] - fc, rtol=1e-4, atol=1e-4)
    prior = prior_from_residuals(residuals, val.scale)
    assert plan.calibration_prior == pytest.approx(prior.to_dict(), rel=1e-9)
    stored = plan.initializer_train_config()
    assert stored["calibration_prior"] == plan.calibration_prior and stored["partial"] is True
    assert result.metrics["calibration_prior_residual_scale_rel"] == prior.residual_scale_rel

    # the initializer adapts a new series from K + 2 points, calibrated by the prior
    init = Initializer(
        model_config=plan.model_config(),
        params={k: v.detach() for k, v in result.params.items()},
        task_spec={"kind": "window", **plan.task_spec().to_dict()},
        train_config=stored,
    )
    aplan = ad.plan_adaptation(
        init, window=L, horizon=H, support=FAMILY.support, period=P, config=ad.AdaptConfig()
    )
    assert (aplan.support, aplan.min_points, aplan.partial) == (L + P, L + P, True)
    fresh = _series(L + P + 2, 7).values
    adapted = ad.adapt_histories(init, [fresh], plan=aplan)
    assert adapted.calibrated.tolist() == [False]
    rel = plan.calibration_prior["residual_scale_rel"]
    assert adapted.residual_scale[0] == pytest.approx(rel * adapted.scale[0], rel=1e-12)
    assert adapted.threshold[0] == plan.calibration_prior["threshold"]
