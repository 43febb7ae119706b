"""The streaming anomaly detector: one observation at a time, state kept between them.

The server's ``POST /v1/observe`` calls :func:`step` for every observation, and an offline run
(tests, a future ``evaluate nab`` through the served path) calls :func:`run_stream` on a whole
stream: the same function, so the two agree number for number.

For each observation ``y_t`` of a series with model window ``w`` (its last ``L`` values):

* ``forecast, sigma``: the series' model's one-step forecast from ``w`` and its residual scale
  (the model's ``sigma`` output: the calibrated per-series residual scale, or the predicted
  standard deviation of a Gaussian head);
* ``z = |y_t - forecast| / sigma``; ``anomaly_score = erf(z / sqrt 2)`` (the one score of
  :mod:`mamlctl.timeseries.anomaly`, which saturates at 1.0 near z = 8.3);
* ``magnitude = -log10 p`` with ``p`` the two-sided Gaussian tail probability of ``z``,
  computed from the asymptotic series of ``erfc`` for large ``z`` so it never saturates
  (z = 3: 2.57; z = 10: 22.8; z = 100: 2173.6; z = 1e6: ~2.2e11);
* flagged when ``z >= z_threshold``: the series' calibrated score threshold turned into sigmas
  (:func:`threshold_z`), clipped to ``[min_z, max_z]`` = [3, 8] by default. The false-alarm rate
  aimed at is the calibration's (0.5% of held-out points by default), never more than the
  3-sigma rate of Gaussian residuals (0.27%) plus what the calibration allowed above it; a
  threshold stored as 1.0 (an old calibration on few points) becomes ``max_z`` sigmas, not a
  flag that can never fire;
* the value is appended to the window, except that a flagged value is *replaced by its
  forecast* while it is one of the first ``max_replaced`` (3) consecutive flags: a spike or a
  short dropout does not leak into the next forecasts (no echo flags after it), while a level
  shift that lasts longer enters the window from its ``max_replaced + 1``-th point on and is
  absorbed (flagged from its onset until the window has learnt it).

The state (window, run of consecutive flags) is a function of the stored values and of which
of them were flagged and replaced: :func:`restore_state` rebuilds it from the registry's
points and anomaly records, so a restarted server continues exactly where it stopped.

numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError
from mamlctl.timeseries.anomaly import MAX_THRESHOLD_Z, score_from_z

FloatArray = npt.NDArray[np.float64]

__all__ = [
    "DetectorConfig",
    "StreamState",
    "Verdict",
    "append",
    "restore_state",
    "run_stream",
    "step",
    "tail_magnitude",
    "threshold_z",
]

_LN10 = math.log(10.0)
_SQRT_PI = math.sqrt(math.pi)
#: Above this ``x = z / sqrt 2`` the asymptotic series of ``erfc`` replaces ``math.erfc``
#: (exact to ~1e-10 relative there; ``math.erfc`` underflows past x ~ 26).
_ASYMPTOTIC_X = 20.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig:
    """The detector's knobs (defaults documented in the module docstring)."""

    min_z: float = 3.0
    max_z: float = MAX_THRESHOLD_Z
    max_replaced: int = 3

    def __post_init__(self) -> None:
        if not (0.0 < self.min_z <= self.max_z and math.isfinite(self.max_z)):
            raise InputError(f"need 0 < min_z <= max_z, got {self.min_z}, {self.max_z}")
        if self.max_replaced < 0:
            raise InputError(f"max_replaced must be >= 0, got {self.max_replaced}")


@dataclass(frozen=True, slots=True)
class StreamState:
    """A series' detector state: the model's input window and the current run of flags."""

    window: FloatArray
    run: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What :func:`step` says about one observation."""

    value: float
    forecast: float
    sigma: float
    residual: float
    z: float
    anomaly_score: float
    magnitude: float
    is_anomaly: bool
    #: The window holds ``forecast`` in this observation's place (a short run of flags).
    replaced: bool


def tail_magnitude(z: float) -> float:
    """``-log10`` of the two-sided Gaussian tail probability ``erfc(|z| / sqrt 2)``; finite
    and increasing for every finite ``z`` (no underflow to ``inf``)."""
    if not math.isfinite(z):
        raise InputError(f"magnitude of a non-finite z: {z}")
    x = abs(z) / math.sqrt(2.0)
    if x < _ASYMPTOTIC_X:
        return -math.log10(math.erfc(x))
    # erfc(x) = exp(-x^2) / (x sqrt(pi)) * (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6) + ...)
    inv = 1.0 / (x * x)
    series = 1.0 - 0.5 * inv + 0.75 * inv * inv - 1.875 * inv * inv * inv
    return (x * x + math.log(x * _SQRT_PI) - math.log(series)) / _LN10


def threshold_z(score_threshold: float, config: DetectorConfig | None = None) -> float:
    """The flag threshold in sigmas for a series' score threshold in [0, 1]: the ``z`` whose
    score ``erf(z / sqrt 2)`` is the threshold, clipped to ``[min_z, max_z]``."""
    cfg = config or DetectorConfig()
    if not (math.isfinite(score_threshold) and 0.0 <= score_threshold <= 1.0):
        raise InputError(f"anomaly threshold must lie in [0, 1], got {score_threshold}")
    ceiling = float(score_from_z(cfg.max_z))
    if score_threshold >= ceiling:
        return cfg.max_z
    z = NormalDist().inv_cdf((1.0 + score_threshold) / 2.0) if score_threshold > 0 else 0.0
    return float(min(max(z, cfg.min_z), cfg.max_z))


def step(
    state: StreamState,
    value: float,
    forecast: float,
    sigma: float,
    *,
    z_threshold: float,
    config: DetectorConfig | None = None,
) -> tuple[StreamState, Verdict]:
    """Score ``value`` against the forecast made from ``state.window``; the next state."""
    cfg = config or DetectorConfig()
    if not math.isfinite(value):
        raise InputError(f"observation is not finite: {value}")
    if not (math.isfinite(forecast) and math.isfinite(sigma) and sigma > 0):
        raise InputError(f"model gave forecast {forecast}, sigma {sigma}: not usable")
    residual = value - forecast
    z = abs(residual) / sigma
    if not math.isfinite(z):
        raise InputError(f"residual {residual} over sigma {sigma} is not finite")
    flagged = z >= z_threshold
    run = state.run + 1 if flagged else 0
    replaced = flagged and run <= cfg.max_replaced
    verdict = Verdict(
        value=value,
        forecast=forecast,
        sigma=sigma,
        residual=residual,
        z=z,
        anomaly_score=float(score_from_z(z)),
        magnitude=tail_magnitude(z),
        is_anomaly=flagged,
        replaced=replaced,
    )
    return StreamState(append(state.window, forecast if replaced else value), run), verdict


def append(window: FloatArray, value: float, *, length: int | None = None) -> FloatArray:
    """``window`` with ``value`` appended, keeping its last ``length`` (default: its length)
    values; a window still shorter than ``length`` grows."""
    size = window.shape[0] if length is None else length
    out = np.empty(min(window.shape[0] + 1, size), dtype=np.float64)
    out[:-1] = window[window.shape[0] + 1 - out.shape[0] :]
    out[-1] = value
    return out


def restore_state(
    values: Sequence[float] | FloatArray,
    *,
    window: int,
    flagged: Sequence[bool] | npt.NDArray[np.bool_],
    replacement: Sequence[float] | FloatArray,
) -> StreamState:
    """The state after the stored tail ``values`` (oldest first), where ``flagged[i]`` says
    the i-th was flagged and ``replacement[i]`` is the forecast the window held in its place
    (NaN: the value itself). Give at least ``window`` values (all there are otherwise) and
    ``max_replaced + 1`` for an exact run."""
    v = np.asarray(values, dtype=np.float64)
    rep = np.asarray(replacement, dtype=np.float64)
    flags = np.asarray(flagged, dtype=np.bool_)
    if not (v.shape == rep.shape == flags.shape) or v.ndim != 1:
        raise InputError("values, flagged and replacement must be 1-D of one length")
    held = np.where(np.isnan(rep), v, rep)[-window:] if window > 0 else v[:0]
    run = 0
    for f in flags[::-1]:
        if not f:
            break
        run += 1
    return StreamState(np.ascontiguousarray(held), run)


def run_stream(
    state: StreamState,
    values: Sequence[float] | FloatArray,
    forecaster: Callable[[FloatArray], tuple[float, float]],
    *,
    z_threshold: float,
    config: DetectorConfig | None = None,
) -> tuple[StreamState, list[Verdict]]:
    """:func:`step` over ``values`` in order, ``forecaster(window) -> (forecast, sigma)``
    giving the model's one-step forecast; the final state and one verdict per value."""
    out: list[Verdict] = []
    for value in np.asarray(values, dtype=np.float64).tolist():
        forecast, sigma = forecaster(state.window)
        state, verdict = step(state, value, forecast, sigma, z_threshold=z_threshold, config=config)
        out.append(verdict)
    return state, out
