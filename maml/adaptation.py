"""Per-series adaptation, vectorised across series: initializer + histories -> adapted models.

A pure stage (no I/O): the ``adapt`` command loads the initializer and the series, calls
:func:`adapt_histories` on chunks of series, and exports/records the result.

For each series with raw values ``v[0..n-1]`` (K = support points, C = calibration points)::

    final support       v[n-K   : n]        -> the exported model (adapted on the K newest)
    calibration support v[n-c-K : n-c]      -> a twin model adapted without the last c points
    calibration tail    v[n-c   : n]        -> its one-step-ahead residuals (never fitted)

with ``c = min(C, n - K)``: a series needs only its K support points. The support pairs follow
the initializer's window task spec: *partial* initializers (new) make ``K - L`` pairs whose
horizons are cut at the support end (NaN targets, masked losses), older ones ``K - L - H + 1``
full pairs (the exact old code path); both normalised with
:func:`mamlctl.timeseries.scaling.support_stats` of the K points (exactly
:func:`mamlctl.timeseries.windows.recent_support`).

Series are grouped by how much they can calibrate on, with no Python loop over series:

* ``c >= MIN_CALIBRATION`` (:mod:`mamlctl.maml.calibration`): the twin is adapted with the
  final models in ONE :func:`mamlctl.maml.engine.batch_adapt` call; its one-step residuals on
  the ``c`` tail points are out-of-sample for a model adapted the same way, so they calibrate
  the exported model (rows with ``c < C`` carry NaN past their tail and the rule ignores them):

  * ``residual_scale`` = :func:`mamlctl.timeseries.anomaly.robust_scale` of the raw residuals
    (floored at 1e-3 of the series' scale);
  * forecasts are bounded below in raw units when the initializer says ``nonnegative`` (by
    ``floor_fraction`` times the window minimum, 0 for older initializers; the exported graph
    bounds them the same way), so the residuals are those the server will see;
  * ``threshold``: for a ``mean`` head :func:`mamlctl.timeseries.anomaly.calibrate` on the raw
    residuals (its scale is ``residual_scale``); for a ``gaussian`` head the same rule applied
    to the scores the server will compute, ``anomaly_score(r, sigma_predicted)``.

* fewer: the family prior stored with the initializer (``calibration_prior``, see
  :mod:`mamlctl.maml.calibration` for how ``train`` computes it and the fallback for older
  initializers); no twin is adapted for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError, TrainingError
from mamlctl.maml.adaptation_plan import AdaptConfig, AdaptPlan, plan_adaptation
from mamlctl.maml.calibration import apply_prior, calibrate_residuals, one_step_windows
from mamlctl.maml.onnx_contract import apply_floor

if TYPE_CHECKING:
    from torch import Tensor

    from mamlctl.maml.initializer import Initializer

__all__ = [
    "AdaptConfig",
    "AdaptPlan",
    "Adapted",
    "adapt_histories",
    "plan_adaptation",
    "summarise",
    "support_tasks",
]

FloatArray = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
#: Residual-scale floor relative to the series' normalisation scale.
RESIDUAL_FLOOR_REL = 1e-3


@dataclass(frozen=True, slots=True, kw_only=True)
class Adapted:
    """N adapted series: stacked float32 parameters and per-series float64 statistics."""

    params: dict[str, F32]
    loc: FloatArray
    scale: FloatArray
    residual_scale: FloatArray
    threshold: FloatArray
    support_loss_before: FloatArray
    support_loss_after: FloatArray
    calibration_mae_adapted: FloatArray  # NaN for series calibrated by the prior
    calibration_mae_initial: FloatArray
    n_residuals: int  # C, the most calibration points a series used
    calibration_points: npt.NDArray[np.int64] | None = None  # per series; 0 = the prior

    @property
    def calibrated(self) -> npt.NDArray[np.bool_]:
        """Per series: calibrated on its own points (else by the family prior)."""
        if self.calibration_points is None:
            return np.ones(self.loc.shape[0], dtype=bool)
        return self.calibration_points > 0

    def __len__(self) -> int:
        return int(self.loc.shape[0])


def support_tasks(
    stretches: FloatArray, *, window: int, horizon: int, partial: bool = False
) -> tuple[F32, F32, FloatArray, FloatArray]:
    """Pairs of N support stretches ``[N, K]`` -> ``x [N, P, L]``, ``y [N, P, H]`` normalised
    by each stretch's support statistics, and ``loc``, ``scale`` ``[N]``.

    Full pairs: ``P = K - L - H + 1``. ``partial``: ``P = K - L``, every origin with a full
    window, targets past the stretch end NaN (unobserved)."""
    from numpy.lib.stride_tricks import sliding_window_view

    from mamlctl.timeseries.scaling import support_stats

    loc, scale = support_stats(stretches)
    z = (stretches - loc[:, None]) / scale[:, None]
    if partial:
        z = np.concatenate([z, np.full((z.shape[0], horizon - 1), np.nan)], axis=1)
    pairs = sliding_window_view(z, window + horizon, axis=1)  # [N, P, L + H]
    x = np.ascontiguousarray(pairs[..., :window], dtype=np.float32)
    y = np.ascontiguousarray(pairs[..., window:], dtype=np.float32)
    return x, y, loc, scale


def _tails(
    histories: Sequence[npt.ArrayLike], plan: AdaptPlan
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """The last ``K + C`` points of every series, right-aligned in one ``[N, K + C]`` array
    (NaN-padded on the left for shorter series), and each series' calibration points
    ``c = min(C, n - K)`` (checked: every series has its K support points)."""
    width = plan.full_points
    out = np.full((len(histories), width), np.nan, dtype=np.float64)
    counts = np.empty(len(histories), dtype=np.int64)
    for i, values in enumerate(histories):
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] < plan.support:
            raise InputError(
                f"series #{i} has {arr.shape[0] if arr.ndim == 1 else arr.shape} points; "
                f"adapting needs K = {plan.support} (and up to C = {plan.calibration} more "
                "to calibrate on)"
            )
        m = min(arr.shape[0], width)
        out[i, width - m :] = arr[-m:]
        counts[i] = m - plan.support
        if not np.all(np.isfinite(arr[-m:])):
            raise InputError(f"series #{i} has NaN or infinite values in its last {m} points")
    return out, counts


def adapt_histories(
    initializer: Initializer, histories: Sequence[npt.ArrayLike], *, plan: AdaptPlan
) -> Adapted:
    """Adapt every series (raw values, oldest first) from the initializer; see module doc."""
    import torch

    from mamlctl.maml.engine import batch_adapt, task_losses
    from mamlctl.maml.models import adapt_names_for, loss_by_name

    n = len(histories)
    if n == 0:
        raise InputError("no series to adapt")
    tails, counts = _tails(histories, plan)
    k, c, L, H = plan.support, plan.calibration, plan.window, plan.horizon
    final_x, final_y, loc, scale = support_tasks(
        tails[:, c:], window=L, horizon=H, partial=plan.partial
    )
    # the calibrated group: a twin adapted on the K points before each series' own tail
    own = np.flatnonzero(counts >= plan.min_calibration)
    twin_start = (c - counts[own])[:, None] + np.arange(k)
    cal_x, cal_y, cal_loc, cal_scale = support_tasks(
        tails[own[:, None], twin_start], window=L, horizon=H, partial=plan.partial
    )

    model = initializer.model()
    theta = {name: p.detach() for name, p in initializer.params.items()}
    loss_fn = loss_by_name(plan.loss, masked=plan.partial)
    inner_lr: float | Mapping[str, Tensor] = (
        plan.inner_lr if plan.inner_lr is not None else initializer.inner_lr(0.0)
    )
    sx = torch.from_numpy(np.concatenate([final_x, cal_x]))
    sy = torch.from_numpy(np.concatenate([final_y, cal_y]))
    adapted = batch_adapt(
        model,
        theta,
        sx,
        sy,
        steps=plan.steps,
        inner_lr=inner_lr,
        loss_fn=loss_fn,
        chunk_size=plan.chunk_size,
        adapt_names=adapt_names_for(initializer.model_config, plan.adapt_scope),
    )
    with torch.no_grad():
        theta_n = {name: p.unsqueeze(0).expand(n, *p.shape) for name, p in theta.items()}
        final = {name: p[:n] for name, p in adapted.items()}
        twin = {name: p[n:] for name, p in adapted.items()}
        fx, fy = sx[:n], sy[:n]
        before = task_losses(model, theta_n, fx, fy, loss_fn=loss_fn).double().numpy()
        after = task_losses(model, final, fx, fy, loss_fn=loss_fn).double().numpy()
    if not np.all(np.isfinite(after)):
        bad = int(np.flatnonzero(~np.isfinite(after))[0])
        raise TrainingError(
            f"adaptation diverged for series #{bad} (non-finite support loss); "
            "lower --lr or --steps"
        )

    floor = RESIDUAL_FLOOR_REL * scale
    residual_scale, threshold = apply_prior(plan.prior, scale, floor=floor, min_z=plan.min_z)
    mae_adapted = np.full(n, np.nan)
    mae_initial = np.full(n, np.nan)
    if own.size:
        residuals, errors0, sigma_pred = _twin_residuals(
            initializer, plan, twin, tails[own], counts[own], cal_loc, cal_scale, k
        )
        residual_scale[own], threshold[own] = calibrate_residuals(
            residuals,
            sigma_pred,
            floor=floor[own],
            false_alarm_rate=plan.false_alarm_rate,
            min_z=plan.min_z,
        )
        mean = np.nanmean if counts[own].min() < c else np.mean
        mae_adapted[own] = mean(np.abs(residuals), axis=1)
        mae_initial[own] = mean(np.abs(errors0), axis=1)
    return Adapted(
        # Parameters a head-only job did not adapt are stride-0 views of theta: kept as views
        # (N times nothing in memory); each series' file still gets the full values.
        params={
            name: p.numpy() if p.stride(0) == 0 else p.contiguous().numpy()
            for name, p in final.items()
        },
        loc=loc,
        scale=scale,
        residual_scale=residual_scale,
        threshold=threshold,
        support_loss_before=before,
        support_loss_after=after,
        calibration_mae_adapted=mae_adapted,
        calibration_mae_initial=mae_initial,
        n_residuals=c,
        calibration_points=np.where(counts >= plan.min_calibration, counts, 0),
    )


def _twin_residuals(
    initializer: Initializer,
    plan: AdaptPlan,
    twin: Mapping[str, Tensor],
    tails: FloatArray,
    counts: npt.NDArray[np.int64],
    cal_loc: FloatArray,
    cal_scale: FloatArray,
    k: int,
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """One-step-ahead residuals ``[M, C]`` (NaN past a series' own tail) of the twins and of the
    initializer on each calibrated series' tail, normalised with the twin's support statistics
    (window j predicts the j-th point after the twin's support), and the gaussian head's
    predicted sigma in raw units."""
    import torch

    from mamlctl.maml.engine import batched_forward
    from mamlctl.maml.models import LOGVAR_MAX, LOGVAR_MIN, split_gaussian

    model = initializer.model()
    forward = batched_forward(model)
    head = initializer.model_config.head
    m = tails.shape[0]
    ends = plan.calibration - counts + k  # each twin support's end in the padded tails
    raw_windows, actual, _ = one_step_windows(tails, ends, counts, plan.window)
    zx = torch.from_numpy(
        ((raw_windows - cal_loc[:, None, None]) / cal_scale[:, None, None]).astype(np.float32)
    )  # [M, C, L]

    def point(out: Tensor) -> FloatArray:
        mean = split_gaussian(out)[0] if head == "gaussian" else out
        return mean[..., 0].double().numpy()

    with torch.no_grad():
        theta_m = {
            name: p.detach().unsqueeze(0).expand(m, *p.shape)
            for name, p in initializer.params.items()
        }
        out = forward(dict(twin), zx)  # [M, C, out]
        forecast = point(out) * cal_scale[:, None] + cal_loc[:, None]
        forecast0 = point(forward(theta_m, zx)) * cal_scale[:, None] + cal_loc[:, None]
        if plan.nonnegative:  # as the exported graph: bound the raw one-step forecasts
            window_min = raw_windows.min(axis=-1)  # [M, C]
            forecast, forecast0 = (
                apply_floor(
                    f[..., None], window_min, nonnegative=True, floor_fraction=plan.floor_fraction
                )[..., 0]
                for f in (forecast, forecast0)
            )
        sigma_pred: FloatArray | None = None
        if head == "gaussian":
            logvar = split_gaussian(out)[1][..., 0].clamp(LOGVAR_MIN, LOGVAR_MAX).double().numpy()
            sigma_pred = np.exp(0.5 * logvar) * cal_scale[:, None]
    return actual - forecast, actual - forecast0, sigma_pred


def _calibrate(
    residuals: FloatArray,
    sigma_pred: FloatArray | None,
    *,
    floor: FloatArray,
    plan: AdaptPlan,
) -> tuple[FloatArray, FloatArray]:
    """:func:`mamlctl.maml.calibration.calibrate_residuals` with the plan's settings."""
    out: tuple[FloatArray, FloatArray] = calibrate_residuals(
        residuals,
        sigma_pred,
        floor=floor,
        false_alarm_rate=plan.false_alarm_rate,
        min_z=plan.min_z,
    )
    return out


def summarise(adapted: Adapted) -> dict[str, float]:
    """Job-level metrics (means over series) for logging; errors in units of series scale
    (calibration errors over the series calibrated on their own points)."""

    def mean(a: FloatArray) -> float:
        a = a[np.isfinite(a)]
        return float(np.mean(a)) if a.size else math.nan

    return {
        "support_loss_before": mean(adapted.support_loss_before),
        "support_loss_after": mean(adapted.support_loss_after),
        # one-step MAE on the calibration tail, in units of each series' scale
        "calibration_nmae_initial": mean(adapted.calibration_mae_initial / adapted.scale),
        "calibration_nmae_adapted": mean(adapted.calibration_mae_adapted / adapted.scale),
        "threshold_mean": mean(adapted.threshold),
        "calibrated_fraction": float(np.mean(adapted.calibrated)) if len(adapted) else math.nan,
    }
