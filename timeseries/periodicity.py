"""Sampling interval and dominant period of a series.

**Interval**: the median step between timestamps (robust to the gaps NAB streams have), or one
given by the user (``parse_interval("5min")``) or implied by an M4 file name.

**Period** (an AUTOPERIOD-style detector: periodogram proposes, autocorrelation confirms):

1. remove a least-squares line (trend would make every lag look correlated);
2. the periodogram's highest local peaks propose candidate periods ``n/k``;
3. each candidate is refined to the lag, within its frequency bin's period range, where the
   unbiased autocorrelation (ACF) averaged over the lag and its multiples (up to 3, within
   n / 2) is highest, and must sit on a hill (a local maximum of that average);
4. significance test: under white noise the sample ACF at a lag is ~ N(0, 1/n), so a candidate
   is accepted only if ``acf[P] >= max(min_strength, z / sqrt(n))`` (z = 4: about 3e-5 one-sided
   per candidate) and ``acf[P] >= z_bartlett * se_P`` with Bartlett's standard error
   ``se_P = sqrt((1 + 2 sum_{k<P} acf[k]^2) / n)`` (z_bartlett = 1.645: the 90% test M4 uses to
   decide seasonality), and it rises at least ``min_prominence`` above
   the ACF's lowest value before it (a random walk's slowly decaying ACF has no such hill);
5. among accepted candidates the strongest ACF wins, except that a divisor of it that is also
   accepted and nearly as strong (>= ``harmonic_ratio`` of it) wins instead: a series with
   daily and weekly cycles is "daily" unless the weekly cycle dominates clearly;
6. ``hints`` (e.g. the calendar day in samples) are always tested as candidates too; an
   accepted hint is preferred when its ACF is at least ``hint_ratio`` of the winner's.

No accepted candidate means "no cycle" (``period=None``), a valid answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "t": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
    "w": 604800.0, "wk": 604800.0, "week": 604800.0,
}  # fmt: skip
_NAMED = {
    "minutely": 60.0,
    "hourly": 3600.0,
    "daily": 86400.0,
    "weekly": 604800.0,
    "monthly": 30.436875 * 86400.0,
    "quarterly": 91.310625 * 86400.0,
    "yearly": 365.2425 * 86400.0,
}


def parse_interval(text: str) -> float:
    """``"5min"`` -> 300.0, ``"1h"`` -> 3600.0, ``"7d"``/``"1w"``/``"weekly"`` -> 604800.0."""
    s = text.strip().lower()
    if s in _NAMED:
        return _NAMED[s]
    m = re.fullmatch(r"(\d+(?:\.\d+)?)?\s*([a-z]+?)s?", s)
    if m is None or m.group(2) not in _UNITS:
        raise InputError(
            f"invalid interval {text!r}: use e.g. 30s, 5min, 1h, 1d, 1w, hourly, daily, weekly"
        )
    value = float(m.group(1) or 1.0) * _UNITS[m.group(2)]
    if value <= 0:
        raise InputError(f"invalid interval {text!r}: must be positive")
    return value


def interval_label(seconds: float | None) -> str | None:
    """A short name for an interval: ``hourly``, ``daily``, ``weekly``, ``5min``, ``2h``, ..."""
    if seconds is None:
        return None
    day = 86400.0
    for name, lo, hi in (
        ("weekly", 7 * day, 7 * day),
        ("daily", day, day),
        ("hourly", 3600.0, 3600.0),
        ("monthly", 28 * day, 31 * day),
        ("quarterly", 89 * day, 92 * day),
        ("yearly", 365 * day, 366 * day),
    ):
        if lo - 1e-6 <= seconds <= hi + 1e-6:
            return name
    s = round(seconds)
    if abs(seconds - s) > 1e-6 or s <= 0:
        return f"{seconds:g}s"
    if s % 86400 == 0:
        return f"{s // 86400}d"
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0:
        return f"{s // 60}min"
    return f"{s}s"


def infer_interval(timestamps: npt.NDArray[np.datetime64] | None) -> float | None:
    """Median step in seconds (None without timestamps or with fewer than two)."""
    if timestamps is None or timestamps.shape[0] < 2:
        return None
    steps = np.diff(timestamps.astype("datetime64[us]")).astype(np.int64) / 1e6
    return float(np.median(steps))


@dataclass(frozen=True, slots=True, kw_only=True)
class PeriodEstimate:
    """``period`` None is "no cycle"; ``strength`` is the ACF at the period (0 without one);
    ``threshold`` the ACF a period needed to be significant for this series length."""

    period: int | None
    strength: float
    threshold: float
    reason: str


def autocorrelation(x: npt.ArrayLike, max_lag: int) -> npt.NDArray[np.float64]:
    """Biased sample ACF (lags 0..max_lag) of a mean-removed series, via FFT."""
    arr = np.asarray(x, dtype=np.float64)
    arr = arr - arr.mean()
    n = arr.shape[0]
    size = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(arr, size)
    acov = np.fft.irfft(f * np.conj(f), size)[: max_lag + 1]
    if acov[0] <= 0:
        return np.zeros(max_lag + 1)
    return np.asarray(acov / acov[0], dtype=np.float64)


def _detrend(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    t = np.arange(x.shape[0], dtype=np.float64)
    slope, intercept = np.polyfit(t, x, 1)
    return np.asarray(x - (slope * t + intercept), dtype=np.float64)


def detect_period(
    values: npt.ArrayLike,
    *,
    max_period: int | None = None,
    hints: Sequence[int] = (),
    z: float = 4.0,
    z_bartlett: float = 1.645,
    min_strength: float = 0.3,
    min_prominence: float = 0.1,
    n_candidates: int = 10,
    harmonic_ratio: float = 0.9,
    hint_ratio: float = 0.5,
) -> PeriodEstimate:
    """Dominant period of a series in samples, or "no cycle" (see the module docstring)."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.shape[0])
    threshold = max(min_strength, z / np.sqrt(max(n, 1)))
    if n < 16:
        return PeriodEstimate(period=None, strength=0.0, threshold=threshold, reason="too short")
    if not np.all(np.isfinite(x)):
        raise InputError("detect_period needs finite values")
    x = _detrend(x)
    if float(np.std(x)) <= 1e-12 * max(1.0, float(np.abs(x).max())):
        return PeriodEstimate(period=None, strength=0.0, threshold=threshold, reason="constant")
    max_p = n // 2 if max_period is None else min(max_period, n // 2)
    if max_p < 2:
        return PeriodEstimate(period=None, strength=0.0, threshold=threshold, reason="too short")
    acf_full = autocorrelation(x, n - 1)
    acf = acf_full[: max_p + 2]

    # Periodogram peaks propose candidates.
    power = np.abs(np.fft.rfft(x)) ** 2
    k = np.arange(power.shape[0])
    ok = (k >= 1) & (k >= n / max_p)
    local = np.zeros_like(ok)
    local[1:-1] = (power[1:-1] >= power[:-2]) & (power[1:-1] >= power[2:])
    cand_k = k[ok & local]
    cand_k = cand_k[np.argsort(power[cand_k])[::-1][:n_candidates]]

    # Lag refinement uses the unbiased ACF: the biased one's (n - k) / n taper pulls a peak
    # towards shorter lags (a clean sine of period 53 would peak at 52).
    lags = np.arange(acf_full.shape[0])
    acf_u = acf_full * n / np.maximum(n - lags, 1)
    # Bartlett's standard error of acf[k] given the correlations below k (as in the M4
    # seasonality test): a random walk's large low-lag correlations widen it, a white
    # noise's do not.
    bartlett = np.sqrt((1.0 + 2.0 * np.concatenate(([0.0], np.cumsum(acf[1:] ** 2)))) / n)

    def comb(lag: int) -> float:
        # Mean unbiased ACF at the lag's multiples (up to 3, within n / 2): a noisy peak's
        # position is pinned by its harmonics, not by one noisy value.
        reps = [m * lag for m in (1, 2, 3) if m * lag <= n // 2 and m * lag < acf_u.shape[0]]
        return float(np.mean(acf_u[reps])) if reps else float(acf_u[lag])

    def refine(lo: int, hi: int) -> int | None:
        lo, hi = max(2, lo), min(max_p, hi)
        if lo > hi:
            return None
        scores = {lag: comb(lag) for lag in range(lo - 1, hi + 2) if 1 <= lag <= max_p + 1}
        lag = max(range(lo, hi + 1), key=lambda k: scores[k])
        if scores[lag] < scores.get(lag - 1, -1.0) or scores[lag] < scores.get(lag + 1, -1.0):
            return None  # on the range's edge, not a hill
        return lag

    scored: dict[int, float] = {}

    def consider(lag: int | None) -> None:
        if lag is None or lag in scored:
            return
        strength = float(acf[lag])
        prominence = strength - float(acf[1:lag].min())
        significant = strength >= max(threshold, z_bartlett * float(bartlett[lag - 1]))
        if significant and prominence >= min_prominence:
            scored[lag] = strength

    for kk in cand_k:
        consider(refine(int(np.floor(n / (kk + 1))) + 1, int(np.ceil(n / max(kk - 1, 0.5))) - 1))
    for h in hints:
        if 2 <= h <= max_p:
            consider(refine(h - max(1, h // 50), h + max(1, h // 50)))
    if not scored:
        best_acf = float(acf[2 : max_p + 1].max()) if max_p >= 2 else 0.0
        return PeriodEstimate(
            period=None,
            strength=0.0,
            threshold=threshold,
            reason=f"no significant cycle (best ACF {best_acf:.2f} < {threshold:.2f} or no hill)",
        )
    best = max(scored, key=lambda lag: scored[lag])
    for lag in sorted(scored):
        if lag < best and _is_multiple(best, lag) and scored[lag] >= harmonic_ratio * scored[best]:
            best = lag
            break
    for h in hints:
        near = [lag for lag in scored if abs(lag - h) <= max(1, h // 50)]
        if near and scored[near[0]] >= hint_ratio * scored[best]:
            best = near[0]
            break
    return PeriodEstimate(period=best, strength=scored[best], threshold=threshold, reason="cycle")


def _is_multiple(big: int, small: int) -> bool:
    ratio = big / small
    return ratio >= 1.5 and abs(ratio - round(ratio)) <= 0.05 * round(ratio)
