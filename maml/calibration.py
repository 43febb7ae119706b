"""Anomaly calibration of adapted series: per series from its own held-out points, or a family
prior when too few are left.

Pure numpy. The rules (a test compares them with :func:`mamlctl.timeseries.anomaly.calibrate`):

* **Per series** (:func:`calibrate_residuals`), vectorised over series: ``scale = max(
  MAD_TO_SIGMA * median|r|, floor)``; the threshold is the ``1 - far`` "higher" quantile of the
  scores, floored at the score of ``min_z``. Series may have different numbers of calibration
  points: missing residuals are NaN and are ignored (the rule is applied to each row's observed
  residuals). Rows without NaN follow the exact unmasked code path.
* **Family prior** (:class:`CalibrationPrior`), for a series with fewer than
  :data:`MIN_CALIBRATION` points beyond its support: ``residual_scale = residual_scale_rel *
  scale`` (the series' support normalisation scale, floored like the per-series rule) and the
  prior's ``threshold``. ``train`` computes the prior on the held-out validation series
  (:func:`prior_from_residuals`): their one-step-ahead out-of-sample residuals, each divided by
  its series' support scale, pooled, then the per-series rule above on the pool (so
  ``residual_scale_rel`` is the pooled robust scale in support-scale units and ``threshold`` the
  pooled ``1 - far`` quantile of the scores, floored at ``min_z``). An initializer written before
  the prior existed gets :data:`FALLBACK_PRIOR_REL` (1.0: one support standard deviation) and the
  threshold of ``min_z``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mamlctl.errors import TrainingError

FloatArray = npt.NDArray[np.float64]
#: Fewer calibration points than this beyond the support: use the family prior.
MIN_CALIBRATION = 8
#: Residual scale relative to the support scale for initializers without a prior.
FALLBACK_PRIOR_REL = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationPrior:
    """A family's calibration for series with too few points of their own."""

    residual_scale_rel: float
    threshold: float | None  # None: the score of the job's min_z

    def to_dict(self) -> dict[str, float]:
        out = {"residual_scale_rel": self.residual_scale_rel}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out

    @classmethod
    def from_train_config(cls, train: Mapping[str, Any]) -> CalibrationPrior:
        """The initializer's ``calibration_prior``, else the documented fallback; a malformed
        or out-of-range prior is a :class:`TrainingError` naming it."""
        import math

        doc = train.get("calibration_prior")
        if not doc:
            return cls(residual_scale_rel=FALLBACK_PRIOR_REL, threshold=None)
        try:
            rel = float(doc["residual_scale_rel"])
            thr = doc.get("threshold")
            threshold = None if thr is None else float(thr)
        except (TypeError, KeyError, ValueError, AttributeError):
            raise TrainingError(
                f"initializer's calibration_prior is malformed ({doc!r}); expected "
                '{"residual_scale_rel": r > 0, "threshold": t in (0, 1]}'
            ) from None
        if not (math.isfinite(rel) and rel > 0) or (
            threshold is not None and not (math.isfinite(threshold) and 0 < threshold <= 1)
        ):
            raise TrainingError(
                f"initializer's calibration_prior is out of range (residual_scale_rel={rel}, "
                f"threshold={threshold})"
            )
        return cls(residual_scale_rel=rel, threshold=threshold)


def calibrate_residuals(
    residuals: FloatArray,
    sigma_pred: FloatArray | None,
    *,
    floor: FloatArray,
    false_alarm_rate: float,
    min_z: float,
) -> tuple[FloatArray, FloatArray]:
    """Per-series residual scale and threshold ``[N]`` of residuals ``[N, C]`` (NaN = none).

    The score is a monotone function of ``z = |r| / sigma``, so the quantile is taken on ``z``
    and only N scores are evaluated.
    """
    from mamlctl.timeseries.anomaly import MAD_TO_SIGMA, MAX_THRESHOLD_Z, score_from_z

    abs_r = np.abs(residuals)
    ragged = bool(np.isnan(abs_r).any())
    median = np.nanmedian if ragged else np.median
    rscale = np.maximum(MAD_TO_SIGMA * median(abs_r, axis=1), floor)
    sigma = rscale[:, None] if sigma_pred is None else np.maximum(sigma_pred, floor[:, None])
    z = abs_r / sigma
    q = 1.0 - false_alarm_rate
    if ragged:
        zq = np.nanquantile(z, q, axis=1, method="higher")
    else:
        zq = np.quantile(z, q, axis=1, method="higher")
    # capped at MAX_THRESHOLD_Z sigmas: few residuals make the quantile their max, and a
    # residual past ~8.3 sigmas would make the threshold exactly 1.0
    zq = np.minimum(zq, max(MAX_THRESHOLD_Z, min_z))
    thr = np.maximum(score_from_z(zq), float(score_from_z(min_z)))
    if not (np.all(np.isfinite(rscale)) and np.all(np.isfinite(thr))):
        raise TrainingError("anomaly calibration produced a non-finite scale or threshold")
    return rscale, thr


def apply_prior(
    prior: CalibrationPrior, scale: FloatArray, *, floor: FloatArray, min_z: float
) -> tuple[FloatArray, FloatArray]:
    """Residual scale and threshold ``[N]`` of series calibrated by the family prior."""
    from mamlctl.timeseries.anomaly import score_from_z

    rscale = np.maximum(prior.residual_scale_rel * scale, floor)
    thr = float(score_from_z(min_z)) if prior.threshold is None else prior.threshold
    return rscale, np.full(scale.shape, thr, dtype=np.float64)


def prior_from_residuals(
    residuals: FloatArray,
    scale: FloatArray,
    *,
    false_alarm_rate: float = 0.005,
    min_z: float = 3.0,
    floor_rel: float = 1e-3,
) -> CalibrationPrior:
    """The family prior from held-out one-step residuals ``[N, C]`` (raw units, NaN = none) of
    series with support scales ``[N]``: the per-series rule on the pool of ``r / scale``."""
    pooled = (residuals / scale[:, None]).ravel()
    pooled = pooled[np.isfinite(pooled)]
    if pooled.size == 0:
        raise TrainingError("no held-out residuals to compute the calibration prior from")
    rel, thr = calibrate_residuals(
        pooled[None, :],
        None,
        floor=np.array([floor_rel]),
        false_alarm_rate=false_alarm_rate,
        min_z=min_z,
    )
    return CalibrationPrior(residual_scale_rel=float(rel[0]), threshold=float(thr[0]))


def one_step_windows(
    padded: FloatArray, ends: npt.NDArray[np.int64], counts: npt.NDArray[np.int64], window: int
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Rolling one-step forecast inputs after each row's support end.

    ``padded [N, W]`` raw values, ``ends [N]`` the (exclusive) end of each row's support,
    ``counts [N]`` how many points after it to forecast. Returns ``windows [N, C, L]`` (window
    j = ``padded[i, e + j - L : e + j]``), ``actual [N, C]`` (``padded[i, e + j]``) and ``valid
    [N, C]`` (``j < counts[i]``), ``C = counts.max()``; invalid entries are clamped copies
    (finite, to be ignored) and ``actual`` is NaN there.
    """
    c = int(counts.max()) if counts.size else 0
    j = np.arange(c)
    last = padded.shape[1] - 1
    rows = np.arange(padded.shape[0])[:, None]
    idx = np.minimum(ends[:, None, None] + j[None, :, None] - window + np.arange(window), last)
    windows = padded[rows[..., None], idx]
    valid = j[None, :] < counts[:, None]
    actual = np.where(valid, padded[rows, np.minimum(ends[:, None] + j[None, :], last)], np.nan)
    return windows, actual, valid
