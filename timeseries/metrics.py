"""Point-forecast accuracy exactly as the M4 competition scored it: sMAPE, MASE and OWA.

Definitions (Makridakis et al., 2020, and the organisers' ``Benchmarks and Evaluation.R``):

* sMAPE of one series, in percent, over its horizon of H steps::

      sMAPE = (1/H) * sum_h 200 * |y_h - yhat_h| / (|y_h| + |yhat_h|)

  A step where actual and forecast are both exactly 0 contributes 0 (a perfect forecast; M4
  itself never met this case, all its values are positive).

* MASE of one series with seasonal period ``m`` (24 for Hourly, 1 for Weekly in M4)::

      scale = mean_{t=m+1..n} |x_t - x_{t-m}|            (in-sample seasonal-naive error)
      MASE  = (1/H) * sum_h |y_h - yhat_h| / scale

* Subset aggregates are means over series of the per-series values, and OWA compares a
  method's two aggregates with Naive2's::

      OWA = (sMAPE / sMAPE_Naive2 + MASE / MASE_Naive2) / 2

Everything here is vectorised over series: actuals and forecasts are ``[S, H]`` arrays, the
in-sample histories are a ragged list of 1-D arrays (padded internally with NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError

FloatArray = npt.NDArray[np.float64]

__all__ = [
    "M4Accuracy",
    "as_horizon_matrix",
    "m4_accuracy",
    "mase",
    "mase_scale",
    "owa",
    "pad_histories",
    "smape",
]


def as_horizon_matrix(values: npt.ArrayLike, *, name: str) -> FloatArray:
    """``values`` as a finite float ``[S, H]`` matrix; a 1-D input is one series."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InputError(f"{name} must be a [series, horizon] matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise InputError(f"{name} has a NaN or infinite value in series #{bad}; drop or fix it")
    return arr


def pad_histories(histories: Sequence[npt.ArrayLike]) -> FloatArray:
    """Left-align ragged histories into an ``[S, max_len]`` matrix, right-padded with NaN."""
    if len(histories) == 0:
        raise InputError("no series given")
    rows = [np.asarray(h, dtype=np.float64).ravel() for h in histories]
    width = max(r.shape[0] for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        if r.shape[0] == 0:
            raise InputError(f"series #{i} has an empty history")
        if not np.all(np.isfinite(r)):
            raise InputError(f"series #{i} has a NaN or infinite value in its history")
        out[i, : r.shape[0]] = r
    return out


def smape(actual: npt.ArrayLike, forecast: npt.ArrayLike) -> FloatArray:
    """Per-series sMAPE in percent (0..200), shape ``[S]``."""
    y = as_horizon_matrix(actual, name="actual")
    f = as_horizon_matrix(forecast, name="forecast")
    _check_same_shape(y, f)
    denom = np.abs(y) + np.abs(f)
    num = 200.0 * np.abs(y - f)
    # 0/0 (both exactly zero) is a perfect forecast: contributes 0.
    ratio = np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)
    return np.asarray(ratio.mean(axis=1), dtype=np.float64)


def mase_scale(histories: Sequence[npt.ArrayLike], *, m: int) -> FloatArray:
    """Per-series MASE denominator: mean |x_t - x_{t-m}| over each in-sample history."""
    if m < 1:
        raise InputError(f"seasonal period m must be >= 1, got {m}")
    padded = pad_histories(histories)
    lengths = np.sum(~np.isnan(padded), axis=1)
    short = np.flatnonzero(lengths <= m)
    if short.size:
        i = int(short[0])
        raise InputError(
            f"series #{i} has {int(lengths[i])} in-sample points; MASE with m={m} needs more than m"
        )
    diffs = np.abs(padded[:, m:] - padded[:, :-m])  # NaN wherever either end is padding
    scale = np.nanmean(diffs, axis=1)
    flat = np.flatnonzero(scale <= 0)
    if flat.size:
        raise InputError(
            f"series #{int(flat[0])} has a constant seasonal-naive in-sample error of 0; "
            "MASE is undefined for it"
        )
    return np.asarray(scale, dtype=np.float64)


def mase(
    histories: Sequence[npt.ArrayLike],
    actual: npt.ArrayLike,
    forecast: npt.ArrayLike,
    *,
    m: int,
    scale: FloatArray | None = None,
) -> FloatArray:
    """Per-series MASE, shape ``[S]``. Pass a precomputed ``scale`` to skip recomputing it."""
    y = as_horizon_matrix(actual, name="actual")
    f = as_horizon_matrix(forecast, name="forecast")
    _check_same_shape(y, f)
    s = mase_scale(histories, m=m) if scale is None else np.asarray(scale, dtype=np.float64)
    if s.shape != (y.shape[0],):
        raise InputError(f"{s.shape[0]} in-sample histories for {y.shape[0]} forecast series")
    return np.asarray(np.abs(y - f).mean(axis=1) / s, dtype=np.float64)


def owa(smape_value: float, mase_value: float, *, smape_naive2: float, mase_naive2: float) -> float:
    """Overall weighted average relative to Naive2, from subset aggregates."""
    if smape_naive2 <= 0 or mase_naive2 <= 0:
        raise InputError("Naive2's sMAPE and MASE must be positive to compute OWA")
    return 0.5 * (smape_value / smape_naive2 + mase_value / mase_naive2)


@dataclass(frozen=True, slots=True, kw_only=True)
class M4Accuracy:
    """A method's accuracy on a subset: per-series values and M4's aggregates."""

    smape_per_series: FloatArray
    mase_per_series: FloatArray
    smape: float
    mase: float
    owa: float | None

    @property
    def n_series(self) -> int:
        return int(self.smape_per_series.shape[0])


def m4_accuracy(
    histories: Sequence[npt.ArrayLike],
    actual: npt.ArrayLike,
    forecast: npt.ArrayLike,
    *,
    m: int,
    naive2_forecast: npt.ArrayLike | None = None,
) -> M4Accuracy:
    """sMAPE, MASE (means over series) and, given Naive2's forecasts, OWA.

    ``histories`` are the in-sample series the MASE scale is computed on (M4: the full training
    part, whatever the method itself was shown).
    """
    scale = mase_scale(histories, m=m)
    s = smape(actual, forecast)
    q = mase(histories, actual, forecast, m=m, scale=scale)
    agg_s, agg_q = float(s.mean()), float(q.mean())
    value: float | None = None
    if naive2_forecast is not None:
        s2 = float(smape(actual, naive2_forecast).mean())
        q2 = float(mase(histories, actual, naive2_forecast, m=m, scale=scale).mean())
        value = owa(agg_s, agg_q, smape_naive2=s2, mase_naive2=q2)
    return M4Accuracy(smape_per_series=s, mase_per_series=q, smape=agg_s, mase=agg_q, owa=value)


def _check_same_shape(y: FloatArray, f: FloatArray) -> None:
    if y.shape != f.shape:
        raise InputError(f"actual has shape {y.shape} but forecast has shape {f.shape}")
