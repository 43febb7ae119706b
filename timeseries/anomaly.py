"""THE anomaly score and threshold logic of mamlctl: server, adaptation job and NAB detector
all call this module, nothing else defines an anomaly score.

Score
    For a residual ``r = actual - forecast`` and a per-series scale ``sigma`` (a robust residual
    scale, or a predicted Gaussian standard deviation), with ``z = |r| / sigma``::

        score = 2 * Phi(z) - 1 = erf(z / sqrt(2))       in [0, 1]

    i.e. one minus the two-sided Gaussian tail probability of a residual at least this large.
    It is 0 for a perfect forecast, monotone non-decreasing in ``|r|``, invariant to scaling
    ``r`` and ``sigma`` together, and reads as a probability: a score of 0.9973 is a 3-sigma
    residual. In float64 it reaches exactly 1.0 near ``z = 8.3``.

Flag
    ``score >= threshold`` (the same ``>=`` NAB uses to turn scores into detections).

Window
    When several actual values of one forecast window are scored at once, the window's score
    is the largest per-step score (``window_score``): one step far off is an anomaly.

Calibration
    From residuals on held-out data (never the points the model was fitted on), per series:
    ``scale = 1.4826 * median(|r|)`` (the normal-consistent median absolute residual about 0,
    robust to the anomalies one wants to find; a biased model gets a larger scale), floored at
    ``min_scale``; ``threshold`` is the ``1 - false_alarm_rate`` empirical quantile of the held-
    out scores, but never below the score of ``min_z`` sigmas and never above the score of
    :data:`MAX_THRESHOLD_Z` sigmas: with few held-out points the empirical quantile is their
    maximum, and a residual past ~8.3 sigmas would make the threshold exactly 1.0 (a flag
    only float rounding can raise). The false-alarm rate aimed at is ``false_alarm_rate``
    (default 0.5% of points) with a floor of ``min_z`` = 3 sigmas (0.27% for Gaussian residuals).

numpy and the standard library only: a serving-only install has neither torch nor scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: 1 / Phi^{-1}(3/4): makes the median absolute residual a consistent Gaussian sigma.
MAD_TO_SIGMA = 1.482602218505602

#: Largest threshold a calibration gives, in sigmas: its score ``erf(8 / sqrt 2)`` is
#: ``1 - 1.2e-15`` (< 1.0 in float64), so a threshold never silently reaches 1.0.
MAX_THRESHOLD_Z = 8.0

__all__ = [
    "MAD_TO_SIGMA",
    "MAX_THRESHOLD_Z",
    "AnomalyCalibration",
    "anomaly_score",
    "calibrate",
    "calibrate_many",
    "flag",
    "robust_scale",
    "score_from_z",
    "window_score",
]

_erf = np.frompyfunc(math.erf, 1, 1)


def score_from_z(z: npt.ArrayLike) -> FloatArray:
    """``erf(|z| / sqrt 2)``: the score of a residual ``z`` sigmas away, elementwise."""
    zz = np.abs(np.asarray(z, dtype=np.float64))
    if np.isnan(zz).any():
        raise InputError("anomaly score of NaN: residual or scale is not a number")
    return np.asarray(_erf(zz / math.sqrt(2.0)), dtype=np.float64)


def anomaly_score(residual: npt.ArrayLike, scale: npt.ArrayLike) -> FloatArray:
    """Anomaly score in [0, 1] of residuals given their scale (broadcast together)."""
    r = np.asarray(residual, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InputError("anomaly scale must be finite and > 0; recalibrate the series")
    if not np.all(np.isfinite(r)):
        raise InputError("residual has a NaN or infinite value")
    return score_from_z(np.abs(r) / s)


def window_score(residuals: npt.ArrayLike, scale: npt.ArrayLike) -> float:
    """One score for a window of residuals: the largest per-step score."""
    scores = anomaly_score(residuals, scale)
    if scores.size == 0:
        raise InputError("no residuals to score")
    return float(scores.max())


def flag(score: npt.ArrayLike, threshold: npt.ArrayLike) -> BoolArray:
    """True where ``score >= threshold``."""
    t = np.asarray(threshold, dtype=np.float64)
    if np.any((t < 0) | (t > 1)) or np.isnan(t).any():
        raise InputError("anomaly threshold must lie in [0, 1]")
    return np.asarray(np.asarray(score, dtype=np.float64) >= t, dtype=np.bool_)


def robust_scale(residuals: npt.ArrayLike, *, min_scale: float = 1e-9) -> float:
    """``max(1.4826 * median(|r|), min_scale)`` over held-out residuals of one series."""
    r = _held_out(residuals)
    if min_scale <= 0:
        raise InputError(f"min_scale must be > 0, got {min_scale}")
    return max(MAD_TO_SIGMA * float(np.median(np.abs(r))), float(min_scale))


@dataclass(frozen=True, slots=True, kw_only=True)
class AnomalyCalibration:
    """A series' anomaly scale and score threshold, with what they were calibrated on."""

    scale: float
    threshold: float
    n_residuals: int
    false_alarm_rate: float
    min_z: float

    def score(self, residual: npt.ArrayLike) -> FloatArray:
        return anomaly_score(residual, self.scale)

    def flag(self, residual: npt.ArrayLike) -> BoolArray:
        return flag(self.score(residual), self.threshold)


def calibrate(
    residuals: npt.ArrayLike,
    *,
    false_alarm_rate: float = 0.005,
    min_z: float = 3.0,
    min_scale: float = 1e-9,
) -> AnomalyCalibration:
    """Calibrate one series' scale and threshold from held-out residuals (see module doc).

    ``false_alarm_rate`` is the share of held-out points allowed to be flagged, ``min_z`` the
    smallest residual (in sigmas) ever flagged, ``min_scale`` the floor of the scale in the
    residuals' units (pass a value relative to the series' level for raw residuals).
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise InputError(f"false_alarm_rate must lie in (0, 1), got {false_alarm_rate}")
    if not (math.isfinite(min_z) and min_z >= 0.0):
        raise InputError(f"min_z must be finite and >= 0, got {min_z}")
    r = _held_out(residuals)
    scale = robust_scale(r, min_scale=min_scale)
    scores = anomaly_score(r, scale)
    empirical = float(np.quantile(scores, 1.0 - false_alarm_rate, method="higher"))
    ceiling = float(score_from_z(max(MAX_THRESHOLD_Z, min_z)))
    threshold = min(max(empirical, float(score_from_z(min_z))), ceiling)
    return AnomalyCalibration(
        scale=scale,
        threshold=threshold,
        n_residuals=int(r.shape[0]),
        false_alarm_rate=false_alarm_rate,
        min_z=min_z,
    )


def calibrate_many(
    residuals: Sequence[npt.ArrayLike],
    *,
    false_alarm_rate: float = 0.005,
    min_z: float = 3.0,
    min_scale: float = 1e-9,
) -> list[AnomalyCalibration]:
    """``calibrate`` for each series' held-out residuals (ragged lengths allowed)."""
    out = []
    for i, r in enumerate(residuals):
        try:
            out.append(
                calibrate(r, false_alarm_rate=false_alarm_rate, min_z=min_z, min_scale=min_scale)
            )
        except InputError as exc:
            raise InputError(f"series #{i}: {exc}") from exc
    return out


def _held_out(residuals: npt.ArrayLike) -> FloatArray:
    r = np.asarray(residuals, dtype=np.float64).ravel()
    if r.shape[0] == 0:
        raise InputError("no held-out residuals to calibrate the anomaly threshold on")
    if not np.all(np.isfinite(r)):
        raise InputError("held-out residuals contain NaN or infinite values")
    return r
