"""The family's calibration prior, computed by ``train`` on its held-out series.

Each held-out series is adapted exactly as validation adapts it (its history's K newest points,
the plan's inner steps and loss) and forecasts every one of its last H points one step ahead
(window j = the L values before point j, normalised with the support statistics, bounded below
like the exported graph for a non-negative family). These residuals are out of sample: the
points were never fitted. :func:`mamlctl.maml.calibration.prior_from_residuals` turns them into
the prior (pooled, in units of each series' support scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from mamlctl.maml.calibration import CalibrationPrior, one_step_windows, prior_from_residuals
from mamlctl.maml.family_data import ResolvedPlan
from mamlctl.maml.family_split import ValidationSet
from mamlctl.maml.horizon_band import HorizonBand, band_from_heldout
from mamlctl.maml.onnx_contract import apply_floor

if TYPE_CHECKING:
    from torch import Tensor


def heldout_one_step_residuals(
    plan: ResolvedPlan, params: Mapping[str, Tensor], val: ValidationSet, *, steps: int
) -> np.ndarray:
    """Raw one-step-ahead residuals ``[N, H]`` of the adapted held-out series on their last H."""
    import torch

    from mamlctl.maml.engine import batch_adapt, batched_forward
    from mamlctl.maml.models import build_model, loss_by_name, point_forecast

    model_config = plan.model_config()
    model = build_model(model_config)
    phi = batch_adapt(
        model,
        params,
        torch.from_numpy(val.support_x),
        torch.from_numpy(val.support_y),
        steps=steps,
        inner_lr=plan.config.inner_lr,
        loss_fn=loss_by_name(plan.loss, masked=plan.partial),
        adapt_names=plan.adapt_names,
    )
    h, window = plan.horizon, plan.window
    padded = np.stack(
        [
            np.concatenate([hist[-window:], act])
            for hist, act in zip(val.histories, val.actual, strict=True)
        ]
    )
    n = padded.shape[0]
    raw, actual, _ = one_step_windows(
        padded, np.full(n, window, dtype=np.int64), np.full(n, h, dtype=np.int64), window
    )
    z = (raw - val.loc[:, None, None]) / val.scale[:, None, None]
    with torch.no_grad():
        out = batched_forward(model)(phi, torch.from_numpy(z.astype(np.float32)))
        mean = point_forecast(out, model_config.head)[..., 0].double().numpy()
    forecast = apply_floor(
        (mean * val.scale[:, None] + val.loc[:, None])[..., None],
        raw.min(axis=-1),
        nonnegative=bool(plan.nonnegative),
        floor_fraction=plan.bound_fraction,
    )[..., 0]
    return np.asarray(actual - forecast, dtype=np.float64)


def heldout_prior(
    plan: ResolvedPlan,
    params: Mapping[str, Tensor],
    val: ValidationSet,
    *,
    steps: int,
    forecast: np.ndarray | None = None,
) -> tuple[CalibrationPrior, HorizonBand | None]:
    """The calibration prior of the family (default false-alarm rate 0.005 and min_z 3) and,
    given the held-out series' multi-step ``forecast`` ``[N, H]`` (raw, from the origin), its
    prediction band (:mod:`mamlctl.maml.horizon_band`) from the same one-step residuals."""
    residuals = heldout_one_step_residuals(plan, params, val, steps=steps)
    prior = prior_from_residuals(residuals, val.scale)
    if forecast is None:
        return prior, None
    return prior, band_from_heldout(residuals, val.actual - forecast, val.scale)
