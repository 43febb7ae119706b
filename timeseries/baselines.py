"""The forecasting baselines a user would otherwise pick, as the M4 organisers computed them.

* ``naive``: the last value, repeated.
* ``seasonal_naive``: the last ``m`` values, repeated (M4's ``naive_seasonal``; with ``m = 1``
  it is ``naive``).
* ``naive2``: naive on the seasonally adjusted series, re-seasonalised. A series is adjusted
  only when ``m > 1``, it has at least ``3 m`` points and M4's 90% autocorrelation test finds
  seasonality (``seasonality_test``); the seasonal indices are those of R's
  ``decompose(type = "multiplicative")`` (``multiplicative_seasonal``). This follows the
  organisers' R benchmark code, which produced the published Naive2 figures: its test squares
  every ACF term of the standard-error bound (the Python NN-benchmark script does not square
  the lag-1 term; the organisers note the difference, the R version is the reference here),
  and it inherits R's default ACF ``lag.max`` (see ``seasonality_test``).
* ``auto_ets`` / ``auto_theta``: statsforecast's AutoETS and AutoTheta, one series at a time.
  statsforecast is the optional ``eval`` extra and is imported only when these are called.

Every function takes a ragged list of histories and returns an ``[S, H]`` forecast matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from mamlctl.errors import ConfigError, InputError

FloatArray = npt.NDArray[np.float64]

#: One-sided 95% normal quantile: M4's "90% autocorrelation test" is two-sided at 10%.
SEASONALITY_TCRIT = 1.645

__all__ = [
    "SEASONALITY_TCRIT",
    "acf",
    "auto_ets",
    "auto_theta",
    "multiplicative_seasonal",
    "naive",
    "naive2",
    "seasonal_naive",
    "seasonality_test",
]


def _as_histories(histories: Sequence[npt.ArrayLike]) -> list[FloatArray]:
    if len(histories) == 0:
        raise InputError("no series given")
    out: list[FloatArray] = []
    for i, h in enumerate(histories):
        arr = np.asarray(h, dtype=np.float64).ravel()
        if arr.shape[0] == 0:
            raise InputError(f"series #{i} has an empty history")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"series #{i} has a NaN or infinite value in its history")
        out.append(arr)
    return out


def _check_horizon(h: int) -> None:
    if h < 1:
        raise InputError(f"forecast horizon must be >= 1, got {h}")


def naive(histories: Sequence[npt.ArrayLike], h: int) -> FloatArray:
    """Last observed value repeated ``h`` times, ``[S, h]``."""
    _check_horizon(h)
    last = np.array([x[-1] for x in _as_histories(histories)])
    return np.repeat(last[:, None], h, axis=1)


def seasonal_naive(histories: Sequence[npt.ArrayLike], h: int, *, m: int) -> FloatArray:
    """The last ``m`` values repeated: ``yhat_{n+k} = x_{n-m+(k mod m)}``, ``[S, h]``."""
    _check_horizon(h)
    if m < 1:
        raise InputError(f"seasonal period m must be >= 1, got {m}")
    xs = _as_histories(histories)
    short = [i for i, x in enumerate(xs) if x.shape[0] < m]
    if short:
        raise InputError(
            f"series #{short[0]} has {xs[short[0]].shape[0]} points; seasonal naive needs m={m}"
        )
    last_cycle = np.stack([x[-m:] for x in xs])  # [S, m]
    return np.asarray(last_cycle[:, np.arange(h) % m], dtype=np.float64)


def acf(x: npt.ArrayLike, max_lag: int) -> FloatArray:
    """Sample autocorrelations at lags ``1..max_lag`` (R's ``acf``: one common mean and the
    full-length variance in the denominator). A constant series gives NaN."""
    arr = np.asarray(x, dtype=np.float64).ravel()
    d = arr - arr.mean()
    denom = float(d @ d)
    n = arr.shape[0]
    lags = np.arange(1, max_lag + 1)
    num = np.array([float(d[k:] @ d[: n - k]) if k < n else np.nan for k in lags])
    if denom == 0.0:
        return np.full(max_lag, np.nan)
    return np.asarray(num / denom, dtype=np.float64)


def _r_default_lag_max(n: int) -> int:
    """R's ``acf`` default ``lag.max`` for one series of length ``n``."""
    return min(math.floor(10.0 * math.log10(n)), n - 1)


def seasonality_test(x: npt.ArrayLike, m: int) -> bool:
    """M4's 90% test: is ``|acf(m)|`` above ``1.645 sqrt((1 + 2 sum_{k<m} acf(k)^2) / n)``?

    False for ``m <= 1``, for series shorter than ``3 m``, for constant series, and (as in
    the organisers' R code, whose ``acf`` call keeps R's default ``lag.max`` of
    ``floor(10 log10 n)``) whenever lag ``m`` lies beyond that: e.g. Hourly (m = 24) series
    need at least 252 points to be found seasonal.
    """
    arr = np.asarray(x, dtype=np.float64).ravel()
    n = arr.shape[0]
    if m <= 1 or n < 3 * m or m > _r_default_lag_max(n):
        return False
    r = acf(arr, m)
    if np.isnan(r).any():
        return False
    limit = SEASONALITY_TCRIT / np.sqrt(n) * np.sqrt(1.0 + 2.0 * float(np.sum(r[: m - 1] ** 2)))
    return bool(abs(r[m - 1]) > limit)


def _centred_moving_average(x: FloatArray, m: int) -> FloatArray:
    """R's ``filter(x, w, sides = 2)`` with decompose's weights; NaN where undefined."""
    w = np.r_[0.5, np.ones(m - 1), 0.5] / m if m % 2 == 0 else np.ones(m) / m
    half = (w.shape[0] - 1) // 2
    out = np.full(x.shape[0], np.nan)
    if x.shape[0] >= w.shape[0]:
        out[half : x.shape[0] - half] = np.convolve(x, w, mode="valid")
    return out


def multiplicative_seasonal(x: npt.ArrayLike, m: int) -> FloatArray:
    """Seasonal indices ``figure[0..m-1]`` of R's multiplicative ``decompose`` (mean 1).

    ``figure[j]`` is the mean over cycles of ``x_t / trend_t`` at positions ``t = j mod m``
    (0-based from the first observation), where ``trend`` is the centred moving average;
    the seasonal component at any position ``t``, past or future, is ``figure[t mod m]``.
    """
    arr = np.asarray(x, dtype=np.float64).ravel()
    if m < 2:
        raise InputError(f"seasonal decomposition needs m >= 2, got {m}")
    if arr.shape[0] < 2 * m:
        raise InputError(f"seasonal decomposition needs 2 periods ({2 * m} points)")
    season = arr / _centred_moving_average(arr, m)
    n_cycles = -(-arr.shape[0] // m)
    grid = np.full(n_cycles * m, np.nan)
    grid[: arr.shape[0]] = season
    figure = np.nanmean(grid.reshape(n_cycles, m), axis=0)
    return np.asarray(figure / figure.mean(), dtype=np.float64)


def naive2(histories: Sequence[npt.ArrayLike], h: int, *, m: int) -> FloatArray:
    """M4's Naive2: naive on the seasonally adjusted series when seasonal, else naive."""
    _check_horizon(h)
    xs = _as_histories(histories)
    out = np.empty((len(xs), h))
    for i, x in enumerate(xs):
        n = x.shape[0]
        if seasonality_test(x, m):
            figure = multiplicative_seasonal(x, m)
            level = x[-1] / figure[(n - 1) % m]
            out[i] = level * figure[(n + np.arange(h)) % m]
        else:
            out[i] = x[-1]
    return out


def auto_ets(histories: Sequence[npt.ArrayLike], h: int, *, m: int) -> FloatArray:
    """statsforecast ``AutoETS(season_length=m)``, series by series, ``[S, h]``."""

    def make(models: Any) -> Any:
        return models.AutoETS(season_length=m)

    return _statsforecast(histories, h, m=m, make=make, name="AutoETS")


def auto_theta(histories: Sequence[npt.ArrayLike], h: int, *, m: int) -> FloatArray:
    """statsforecast ``AutoTheta(season_length=m)``, series by series, ``[S, h]``."""

    def make(models: Any) -> Any:
        return models.AutoTheta(season_length=m)

    return _statsforecast(histories, h, m=m, make=make, name="AutoTheta")


def _statsforecast(
    histories: Sequence[npt.ArrayLike],
    h: int,
    *,
    m: int,
    make: Callable[[Any], Any],
    name: str,
) -> FloatArray:
    _check_horizon(h)
    if m < 1:
        raise InputError(f"seasonal period m must be >= 1, got {m}")
    try:
        from statsforecast import models
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            f"{name} needs statsforecast; install the eval extra: pip install 'mamlctl[eval]'"
        ) from exc
    xs = _as_histories(histories)
    out = np.empty((len(xs), h))
    for i, x in enumerate(xs):
        try:
            fc = make(models).forecast(y=x, h=h)["mean"]
        except Exception as exc:  # statsforecast raises bare ValueErrors on odd inputs
            raise InputError(f"{name} failed on series #{i} ({x.shape[0]} points): {exc}") from exc
        out[i] = np.asarray(fc, dtype=np.float64)
    return out
