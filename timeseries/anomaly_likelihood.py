"""Numenta's anomaly likelihood (Ahmad, Lavin, Purdy, Agha 2017, "Unsupervised real-time anomaly
detection for streaming data", Neurocomputing 262), written from the paper's definition.

Input: one raw anomaly score ``s_t`` in [0, 1] per row (the paper's is HTM's prediction error;
mamlctl passes a forecaster's squashed residual). For row ``t``:

* ``mu~_t``: the mean of the last ``short_window`` (W' = 10) raw scores, ``s_t`` included;
* ``mu_t, sigma_t``: the mean and standard deviation of those short-term averages over the
  ``historic_window`` (W = 8640) rows before ``t``, re-estimated every ``reestimation_period``
  (100) rows, floored at mean 0.03 and variance 0.0003 (Numenta's published floors against
  near-constant scores); the oldest ``learning_period`` rows of a series never enter the
  estimate (the averages within the window are recomputed from the window's first row);
* likelihood ``L_t = 1 - Q((mu~_t - mu_t) / sigma_t)`` (one-sided, as the paper writes it;
  Numenta's code mirrors averages below the mean, which also flags quiet spells:
  ``two_sided=True``);
* a tail ``Q <= 1e-5`` right after a tail ``<= 1e-5`` is raised to ``1e-3`` (Numenta's published
  filter: only the onset of a "red" stretch stays red);
* the first ``learning_period + estimation_samples`` rows get ``L = 0.5`` (no estimate yet).

NAB's Numenta detector takes ``learning_period = floor(probation / 2)`` and
``estimation_samples = probation - learning_period`` and reports the log-scaled likelihood
``log(1.0000000001 - L) / log(1e-10)`` (:func:`log_likelihood`), which spreads the likelihoods
near 1 over [0, 1] for NAB's threshold sweep. Every parameter default here is the published
one; nothing was fitted to a benchmark. Every row uses only rows before it and itself.

numpy and the standard library only.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError

FloatArray = npt.NDArray[np.float64]

__all__ = ["anomaly_likelihood", "log_likelihood", "nab_likelihood_periods"]

MIN_MEAN = 0.03
MIN_VARIANCE = 0.0003
RED_TAIL = 1e-5  # 1 - 0.99999
YELLOW_TAIL = 1e-3  # 1 - 0.999
_LOG_EPS = math.log(1e-10)


def nab_likelihood_periods(probation: int) -> tuple[int, int]:
    """``(learning_period, estimation_samples)`` as NAB's Numenta detector derives them."""
    learning = probation // 2
    return learning, probation - learning


def _check(raw: npt.ArrayLike, **sizes: int) -> FloatArray:
    s = np.asarray(raw, dtype=np.float64)
    if s.ndim != 1:
        raise InputError(f"raw anomaly scores must be one-dimensional, got shape {s.shape}")
    if not np.all(np.isfinite(s)) or np.any((s < 0) | (s > 1)):
        raise InputError("raw anomaly scores must be finite and lie in [0, 1]")
    for name, value in sizes.items():
        if value < (1 if name in ("historic_window", "short_window", "reestimation_period") else 0):
            raise InputError(f"{name} must be positive, got {value}")
    return s


def _moving_average(values: FloatArray, window: int) -> FloatArray:
    """Mean of the last ``window`` values at each position, fewer at the start."""
    c = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, values.shape[0] + 1)
    lo = np.maximum(0, idx - window)
    return np.asarray((c[idx] - c[lo]) / (idx - lo), dtype=np.float64)


_erfc = np.frompyfunc(math.erfc, 1, 1)  # erfc, not 1 - erf: the tails go down to 1e-5


def _q(z: FloatArray) -> FloatArray:
    """Gaussian upper tail ``Q(z) = erfc(z / sqrt 2) / 2``, elementwise."""
    return 0.5 * np.asarray(_erfc(z / math.sqrt(2.0)), dtype=np.float64)


def anomaly_likelihood(
    raw: npt.ArrayLike,
    *,
    learning_period: int = 288,
    estimation_samples: int = 100,
    historic_window: int = 8640,
    short_window: int = 10,
    reestimation_period: int = 100,
    two_sided: bool = False,
) -> FloatArray:
    """Anomaly likelihood ``L_t`` in [0, 1] of each row of ``raw`` (see the module doc);
    ``two_sided``: Numenta's code's variant, averages below the mean mirrored above it."""
    s = _check(
        raw,
        learning_period=learning_period,
        estimation_samples=estimation_samples,
        historic_window=historic_window,
        short_window=short_window,
        reestimation_period=reestimation_period,
    )
    n = s.shape[0]
    out = np.full(n, 0.5)
    start = max(1, learning_period + estimation_samples)
    if n <= start:
        return out
    rows = np.arange(start, n)
    # Distribution of row t: estimated at the last re-estimation row j <= t.
    est_rows = [
        start,
        *range((start // reestimation_period + 1) * reestimation_period, n, reestimation_period),
    ]
    mean = np.empty(n - start)
    std = np.empty(n - start)
    first = np.empty(n - start, dtype=np.int64)  # first row of the history behind row t's average
    bounds = [*est_rows, n]
    for j, end in zip(est_rows, bounds[1:], strict=True):
        lo = max(0, j - historic_window)
        averages = _moving_average(s[lo:j], short_window)
        skip = min(j, max(0, learning_period - lo))
        data = averages[skip:]
        if data.size == 0:
            m, sd = 0.5, 1000.0  # Numenta's null distribution
        else:
            m = max(float(data.mean()), MIN_MEAN)
            sd = math.sqrt(max(float(data.var()), MIN_VARIANCE))
        mean[j - start : end - start] = m
        std[j - start : end - start] = sd
        first[j - start : end - start] = lo
    c = np.concatenate([[0.0], np.cumsum(s)])

    def short_mean(t: npt.NDArray[np.int64]) -> FloatArray:
        lo = np.maximum(first, t - short_window + 1)
        return np.asarray((c[t + 1] - c[lo]) / (t + 1 - lo), dtype=np.float64)

    z_now = (short_mean(rows) - mean) / std
    z_before = (short_mean(rows - 1) - mean) / std
    if two_sided:
        z_now, z_before = np.abs(z_now), np.abs(z_before)
    tail, before = _q(z_now), _q(z_before)
    tail = np.where((tail <= RED_TAIL) & (before <= RED_TAIL), YELLOW_TAIL, tail)
    out[start:] = 1.0 - tail
    return out


def log_likelihood(likelihood: npt.ArrayLike) -> FloatArray:
    """NAB's log scaling ``log(1.0000000001 - L) / log(1e-10)``, clipped to [0, 1]."""
    lik = np.asarray(likelihood, dtype=np.float64)
    if not np.all(np.isfinite(lik)) or np.any((lik < 0) | (lik > 1)):
        raise InputError("likelihoods must be finite and lie in [0, 1]")
    return np.clip(np.log(1.0000000001 - lik) / _LOG_EPS, 0.0, 1.0)
