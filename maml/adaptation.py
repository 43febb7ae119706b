"""Per-series adaptation, vectorised across series: initializer + histories -> adapted models.

A pure stage (no I/O): the ``adapt`` command loads the initializer and the series, calls
:func:`adapt_histories` on chunks of series, and exports/records the result.

For each series with raw values ``v[0..n-1]`` (K = support points, C = calibration points)::

    final support       v[n-K   : n]        -> the exported model (adapted on the K newest)
    calibration support v[n-C-K : n-C]      -> a twin model adapted without the last C points
    calibration tail    v[n-C   : n]        -> its one-step-ahead residuals (never fitted)

Both adaptations run as ONE :func:`mamlctl.maml.engine.batch_adapt` call over 2N tasks (no Python
loop over series). A support of K raw points gives ``K - L - H + 1`` (x, y) pairs, normalised
with :func:`mamlctl.timeseries.scaling.support_stats` of those K points (exactly
:func:`mamlctl.timeseries.windows.recent_support`). The residuals of the twin on the calibration
tail are out-of-sample for a model adapted the same way, so they calibrate the exported model:

* ``residual_scale`` = :func:`mamlctl.timeseries.anomaly.robust_scale` of the raw residuals
  (floored at 1e-3 of the series' scale);
* forecasts are bounded below in raw units when the initializer says ``nonnegative`` (by
  ``floor_fraction`` times the window minimum, 0 for older initializers; the exported graph
  bounds them the same way), so the residuals are those the server will see;
* ``threshold``: for a ``mean`` head :func:`mamlctl.timeseries.anomaly.calibrate` on the raw
  residuals (its scale is ``residual_scale``); for a ``gaussian`` head the same rule applied to
  the scores the server will compute, ``anomaly_score(r, sigma_predicted)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from mamlctl.domain import AdaptScope, WeightFormat
from mamlctl.errors import InputError, TrainingError
from mamlctl.maml.onnx_contract import apply_floor

if TYPE_CHECKING:
    from torch import Tensor

    from mamlctl.maml.initializer import Initializer

FloatArray = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
#: Residual-scale floor relative to the series' normalisation scale.
RESIDUAL_FLOOR_REL = 1e-3


class AdaptConfig(BaseModel):
    """Hyperparameters of the daily adaptation; None means "as in meta-training"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int | None = Field(default=None, ge=1, le=1000)
    inner_lr: float | None = Field(default=None, gt=0)
    calibration: int | None = Field(default=None, ge=4)
    false_alarm_rate: float = Field(default=0.005, gt=0, lt=1)
    min_z: float = Field(default=3.0, ge=0)
    chunk_size: int = Field(default=1024, ge=1)
    adapt_scope: AdaptScope | None = None
    weights: WeightFormat = "int8-delta"


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptPlan:
    """Resolved shapes and hyperparameters of one adaptation job."""

    window: int
    horizon: int
    support: int  # K raw points
    pairs: int  # K - L - H + 1
    calibration: int  # C raw points
    steps: int
    inner_lr: float | None  # None: the initializer's learned Meta-SGD rates
    loss: str  # mse | mae | gaussian_nll, as in meta-training
    false_alarm_rate: float
    min_z: float
    chunk_size: int
    nonnegative: bool = False  # raw forecasts bounded below (the exported graph does the same)
    floor_fraction: float = 0.0  # the bound: relu(fraction * window minimum); 0 = clip at 0
    adapt_scope: str = "all"  # all | head (ANIL: only the last layer moves per series)
    weights: str = "int8-delta"  # float32 | int8-delta: how the export stores adapted layers

    @property
    def min_points(self) -> int:
        """Points a series needs: K for the support plus C calibration points."""
        return self.support + self.calibration

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "horizon": self.horizon,
            "support": self.support,
            "pairs": self.pairs,
            "calibration": self.calibration,
            "steps": self.steps,
            "inner_lr": "meta-sgd" if self.inner_lr is None else self.inner_lr,
            "loss": self.loss,
            "nonnegative": self.nonnegative,
            "floor_fraction": self.floor_fraction,
            "adapt_scope": self.adapt_scope,
            "weights": self.weights,
            "false_alarm_rate": self.false_alarm_rate,
            "min_z": self.min_z,
        }


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
    calibration_mae_adapted: FloatArray
    calibration_mae_initial: FloatArray
    n_residuals: int

    def __len__(self) -> int:
        return int(self.loc.shape[0])


def plan_adaptation(
    initializer: Initializer,
    *,
    window: int,
    horizon: int,
    support: int,
    period: int | None,
    config: AdaptConfig,
) -> AdaptPlan:
    """Resolve the job's shapes and hyperparameters from the family, initializer and config.

    The number of support pairs follows the initializer's window task spec when it has one
    (adaptation mirrors meta-training's inner loop), else the family's K raw points.
    """
    mc = initializer.model_config
    if (int(mc.window), int(mc.horizon)) != (window, horizon):
        raise TrainingError(
            f"initializer takes L={mc.window}, H={mc.horizon} but the family has "
            f"L={window}, H={horizon}; retrain the family's initializer"
        )
    spec = initializer.task_spec
    pairs = int(spec["support"]) if spec.get("kind") == "window" else support - window - horizon + 1
    if pairs < 1:
        raise TrainingError(
            f"support K={support} is too short for L={window}, H={horizon} (needs >= L + H)"
        )
    train = initializer.train_config
    steps = config.steps or int(train.get("inner_steps", 1))
    if config.inner_lr is not None:
        lr: float | None = float(config.inner_lr)
    elif initializer.inner_lrs is not None:
        lr = None
    else:
        lr = float(train.get("inner_lr", 0.01))
    # Initializers written before the loss was recorded trained with the head's natural loss.
    loss = str(train.get("loss", "auto"))
    if loss == "auto":
        loss = "gaussian_nll" if mc.head == "gaussian" else "mse"
    calibration = config.calibration or max(2 * horizon, period or 0, 24)
    return AdaptPlan(
        window=window,
        horizon=horizon,
        support=pairs + window + horizon - 1,
        pairs=pairs,
        calibration=calibration,
        steps=steps,
        inner_lr=lr,
        loss=loss,
        nonnegative=bool(train.get("nonnegative", False)),
        # Initializers written before the bound was recorded clip at 0.
        floor_fraction=float(train.get("floor_fraction", 0.0)),
        adapt_scope=config.adapt_scope or str(train.get("adapt_scope", "all")),
        weights=config.weights,
        false_alarm_rate=config.false_alarm_rate,
        min_z=config.min_z,
        chunk_size=config.chunk_size,
    )


def support_tasks(
    stretches: FloatArray, *, window: int, horizon: int
) -> tuple[F32, F32, FloatArray, FloatArray]:
    """Pairs of N support stretches ``[N, K]`` -> ``x [N, P, L]``, ``y [N, P, H]`` normalised
    by each stretch's support statistics, and ``loc``, ``scale`` ``[N]``."""
    from numpy.lib.stride_tricks import sliding_window_view

    from mamlctl.timeseries.scaling import support_stats

    loc, scale = support_stats(stretches)
    z = (stretches - loc[:, None]) / scale[:, None]
    pairs = sliding_window_view(z, window + horizon, axis=1)  # [N, P, L + H]
    x = np.ascontiguousarray(pairs[..., :window], dtype=np.float32)
    y = np.ascontiguousarray(pairs[..., window:], dtype=np.float32)
    return x, y, loc, scale


def _tails(histories: Sequence[npt.ArrayLike], plan: AdaptPlan) -> FloatArray:
    """The last K + C points of every series as one ``[N, K + C]`` array (checked)."""
    need = plan.min_points
    out = np.empty((len(histories), need), dtype=np.float64)
    for i, values in enumerate(histories):
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] < need:
            raise InputError(
                f"series #{i} has {arr.shape[0] if arr.ndim == 1 else arr.shape} points; "
                f"adapting needs K + C = {plan.support} + {plan.calibration} = {need}"
            )
        out[i] = arr[-need:]
    if not np.all(np.isfinite(out)):
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise InputError(f"series #{bad} has NaN or infinite values in its last {need} points")
    return out


def adapt_histories(
    initializer: Initializer, histories: Sequence[npt.ArrayLike], *, plan: AdaptPlan
) -> Adapted:
    """Adapt every series (raw values, oldest first) from the initializer; see module doc."""
    import torch

    from mamlctl.maml.engine import batch_adapt, batched_forward, task_losses
    from mamlctl.maml.models import adapt_names_for, loss_by_name, split_gaussian

    n = len(histories)
    if n == 0:
        raise InputError("no series to adapt")
    tails = _tails(histories, plan)
    k, c, L, H = plan.support, plan.calibration, plan.window, plan.horizon
    final_x, final_y, loc, scale = support_tasks(tails[:, c:], window=L, horizon=H)
    cal_x, cal_y, cal_loc, cal_scale = support_tasks(tails[:, :k], window=L, horizon=H)

    model = initializer.model()
    theta = {name: p.detach() for name, p in initializer.params.items()}
    loss_fn = loss_by_name(plan.loss)
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
    forward = batched_forward(model)
    head = initializer.model_config.head

    def point(out: Tensor) -> FloatArray:
        mean = split_gaussian(out)[0] if head == "gaussian" else out
        return mean[..., 0].double().numpy()

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

        # One-step-ahead forecasts of the calibration tail by the twin (and the initializer),
        # normalised with the twin's support statistics: window j predicts tails[:, k + j].
        from numpy.lib.stride_tricks import sliding_window_view

        raw_windows = sliding_window_view(tails[:, k - L : k + c - 1], L, axis=1)  # [N, C, L]
        z_tail = (tails[:, k - L : k + c - 1] - cal_loc[:, None]) / cal_scale[:, None]
        zx = torch.from_numpy(
            np.ascontiguousarray(sliding_window_view(z_tail, L, axis=1), dtype=np.float32)
        )  # [N, C, L]
        out = forward(twin, zx)  # [N, C, out]
        actual = tails[:, k:]  # [N, C]
        forecast = point(out) * cal_scale[:, None] + cal_loc[:, None]
        forecast0 = point(forward(theta_n, zx)) * cal_scale[:, None] + cal_loc[:, None]
        if plan.nonnegative:  # as the exported graph: bound the raw one-step forecasts
            window_min = raw_windows.min(axis=-1)  # [N, C]
            forecast, forecast0 = (
                apply_floor(
                    f[..., None], window_min, nonnegative=True, floor_fraction=plan.floor_fraction
                )[..., 0]
                for f in (forecast, forecast0)
            )
        residuals = actual - forecast
        if head == "gaussian":
            from mamlctl.maml.models import LOGVAR_MAX, LOGVAR_MIN

            logvar = split_gaussian(out)[1][..., 0].clamp(LOGVAR_MIN, LOGVAR_MAX).double().numpy()
            sigma_pred: FloatArray | None = np.exp(0.5 * logvar) * cal_scale[:, None]
        else:
            sigma_pred = None

    residual_scale, threshold = _calibrate(
        residuals, sigma_pred, floor=RESIDUAL_FLOOR_REL * scale, plan=plan
    )
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
        calibration_mae_adapted=np.abs(residuals).mean(axis=1),
        calibration_mae_initial=np.abs(actual - forecast0).mean(axis=1),
        n_residuals=c,
    )


def _calibrate(
    residuals: FloatArray,
    sigma_pred: FloatArray | None,
    *,
    floor: FloatArray,
    plan: AdaptPlan,
) -> tuple[FloatArray, FloatArray]:
    """Per-series residual scale and threshold, vectorised over series.

    Exactly the rules of :func:`mamlctl.timeseries.anomaly.calibrate` (a test compares them):
    ``scale = max(MAD_TO_SIGMA * median|r|, floor)``; the threshold is the ``1 - far``
    "higher" quantile of the scores, floored at the score of ``min_z``. The score is a monotone
    function of ``z = |r| / sigma``, so the quantile is taken on ``z`` and only N scores are
    evaluated.
    """
    from mamlctl.timeseries.anomaly import MAD_TO_SIGMA, score_from_z

    abs_r = np.abs(residuals)
    rscale = np.maximum(MAD_TO_SIGMA * np.median(abs_r, axis=1), floor)
    sigma = rscale[:, None] if sigma_pred is None else np.maximum(sigma_pred, floor[:, None])
    z = abs_r / sigma
    zq = np.quantile(z, 1.0 - plan.false_alarm_rate, axis=1, method="higher")
    thr = np.maximum(score_from_z(zq), float(score_from_z(plan.min_z)))
    if not (np.all(np.isfinite(rscale)) and np.all(np.isfinite(thr))):
        raise TrainingError("anomaly calibration produced a non-finite scale or threshold")
    return rscale, thr


def summarise(adapted: Adapted) -> dict[str, float]:
    """Job-level metrics (means over series) for logging; errors in units of series scale."""

    def mean(a: FloatArray) -> float:
        return float(np.mean(a)) if a.size else math.nan

    return {
        "support_loss_before": mean(adapted.support_loss_before),
        "support_loss_after": mean(adapted.support_loss_after),
        # one-step MAE on the calibration tail, in units of each series' scale
        "calibration_nmae_initial": mean(adapted.calibration_mae_initial / adapted.scale),
        "calibration_nmae_adapted": mean(adapted.calibration_mae_adapted / adapted.scale),
        "threshold_mean": mean(adapted.threshold),
    }
