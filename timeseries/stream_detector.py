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

**The ranking score** (``rank_score`` in [0, 1], what NAB's threshold sweep is run on; the
flag above stays the calibrated ``z`` rule). Flags compare one series with its own threshold;
ranking anomalies *across* series needs a score that means the same on every series, which a
fixed residual scale does not (one calibrated on a quiet stretch makes every later row look
extreme). Per series, O(1) state (:class:`Ranking`):

* ``out_of_range``: the value lies more than ``spatial_tolerance`` (5%) of the range of the
  series' earlier values beyond that range (Numenta's "spatial" check; the range is that of
  every stored value, probation included, from the first observation on);
* ``anomaly_likelihood``: Numenta's anomaly likelihood (Ahmad et al. 2017;
  :mod:`mamlctl.timeseries.anomaly_likelihood` is the batch form) of the raw score
  ``erf(|residual| / scale / sqrt 2)`` (``scale``: the series' own normalisation scale, the
  model's ``scale`` metadata): the mean of the last ``short_window`` (10) raw scores against
  the running mean and variance of those averages (exact over the first ``historic_window``
  (8640) averages, exponentially weighted with weight ``1 / historic_window`` after), floored
  as Numenta floors them (mean 0.03, variance 0.0003); one-sided upper tail; a red tail
  (<= 1e-5) right after a red tail is raised to 1e-3; 0.5 until ``estimation_samples`` (100)
  averages are in (no estimate yet);
* ``rank_score`` = 1 when ``out_of_range``, else NAB's log scaling of the likelihood
  ``log(1.0000000001 - L) / log(1e-10)`` clipped to [0, 1].

**The flag** (``DetectorConfig.flag``): ``rank`` flags ``rank_score >= 0.5``, a value out of
range or a red likelihood (tail <= 1e-5); it is ``mamlctl serve``'s default. ``z`` is the
calibrated rule above (``serve --flag z``; this module's default, the rule in isolation). On
NAB the ``z`` rule flagged 10-20% of the rows outside the labelled windows (its per-series
residual scales are too small on a quarter of the files) and the rank rule 0.04%; on injected
spikes, shifts and dropouts, 10-26% against 0.01-0.03% (``benchmarks/RESULTS.md``). The rank
rule's price: in a series' first ``estimation_samples`` scored points only out-of-range
values flag (the likelihood has no estimate yet).

Chosen on NAB's odd-ranked files (``benchmarks/RESULTS.md``, issue 15): on one served run, the
spatial check alone, the likelihood alone and the two together were compared, with Numenta's
published parameters and no fitted ones; the two together won.

The state (window, run of consecutive flags) is a function of the stored values and of which
of them were flagged and replaced: :func:`restore_state` rebuilds it from the registry's
points and anomaly records, so a restarted server continues exactly where it stopped. The
ranking state is not (it depends on past forecasts): the server stores it with the series'
counters in the same transaction as the points (:func:`ranking_to_json`).

numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError
from mamlctl.timeseries.anomaly import MAX_THRESHOLD_Z, score_from_z
from mamlctl.timeseries.anomaly_likelihood import MIN_MEAN, MIN_VARIANCE, RED_TAIL, YELLOW_TAIL

FloatArray = npt.NDArray[np.float64]

__all__ = [
    "FLAG_RULES",
    "DetectorConfig",
    "Ranking",
    "StreamState",
    "Verdict",
    "append",
    "observe_range",
    "rank",
    "ranking_from_json",
    "ranking_to_json",
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
_SQRT2 = math.sqrt(2.0)
_LOG_EPS = math.log(1e-10)


#: The flag rules (:attr:`DetectorConfig.flag`).
FLAG_RULES = ("z", "rank")


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig:
    """The detector's knobs (defaults documented in the module docstring)."""

    min_z: float = 3.0
    max_z: float = MAX_THRESHOLD_Z
    max_replaced: int = 3
    # the ranking score (Numenta's published values)
    short_window: int = 10
    historic_window: int = 8640
    estimation_samples: int = 100
    spatial_tolerance: float = 0.05
    #: what ``is_anomaly`` is: ``z`` (``z >= z_threshold``, the calibrated rule) or ``rank``
    #: (``rank_score >= rank_flag``: out of range, or a red anomaly likelihood)
    flag: str = "z"
    rank_flag: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 < self.min_z <= self.max_z and math.isfinite(self.max_z)):
            raise InputError(f"need 0 < min_z <= max_z, got {self.min_z}, {self.max_z}")
        if self.max_replaced < 0:
            raise InputError(f"max_replaced must be >= 0, got {self.max_replaced}")
        if min(self.short_window, self.historic_window) < 1 or self.estimation_samples < 0:
            raise InputError("short_window and historic_window must be >= 1, estimation >= 0")
        if not (self.spatial_tolerance >= 0.0 and math.isfinite(self.spatial_tolerance)):
            raise InputError(f"spatial_tolerance must be >= 0, got {self.spatial_tolerance}")
        if self.flag not in FLAG_RULES:
            raise InputError(f"flag must be one of {', '.join(FLAG_RULES)}, got {self.flag!r}")
        if not 0.0 < self.rank_flag <= 1.0:
            raise InputError(f"rank_flag must lie in (0, 1], got {self.rank_flag}")


@dataclass(frozen=True, slots=True)
class Ranking:
    """A series' ranking state (see the module docstring): its last raw scores, the running
    statistics of their short-term averages, whether the last tail was red, its value range."""

    recent: tuple[float, ...] = ()
    count: int = 0
    mean: float = 0.0
    var: float = 0.0
    red: bool = False
    low: float = math.inf
    high: float = -math.inf


@dataclass(frozen=True, slots=True)
class StreamState:
    """A series' detector state: the model's input window and the current run of flags."""

    window: FloatArray
    run: int = 0
    ranking: Ranking = Ranking()


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
    anomaly_likelihood: float
    out_of_range: bool
    rank_score: float


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


def observe_range(ranking: Ranking, value: float) -> Ranking:
    """``ranking`` with ``value`` in its range (a value stored without a score)."""
    if ranking.low <= value <= ranking.high:
        return ranking
    return replace(ranking, low=min(ranking.low, value), high=max(ranking.high, value))


def rank(
    ranking: Ranking, value: float, raw: float, config: DetectorConfig | None = None
) -> tuple[Ranking, float, bool, float]:
    """One row of the ranking score (module docstring): the next state, the anomaly
    likelihood, ``out_of_range`` and ``rank_score`` of ``value`` with raw score ``raw``."""
    cfg = config or DetectorConfig()
    spread = ranking.high - ranking.low
    slack = cfg.spatial_tolerance * spread
    outside = spread > 0 and (value > ranking.high + slack or value < ranking.low - slack)
    recent = (*ranking.recent, raw)[-cfg.short_window :]
    average = math.fsum(recent) / len(recent)
    red = False
    likelihood = 0.5
    if ranking.count >= max(cfg.estimation_samples, 1):
        mean = max(ranking.mean, MIN_MEAN)
        sd = math.sqrt(max(ranking.var, MIN_VARIANCE))
        tail = 0.5 * math.erfc((average - mean) / sd / _SQRT2)
        red = tail <= RED_TAIL
        likelihood = 1.0 - (YELLOW_TAIL if red and ranking.red else tail)
    count = ranking.count + 1
    alpha = max(1.0 / count, 1.0 / cfg.historic_window)
    delta = average - ranking.mean
    nxt = Ranking(
        recent=recent,
        count=count,
        mean=ranking.mean + alpha * delta,
        var=(1.0 - alpha) * (ranking.var + alpha * delta * delta),
        red=red,
        low=min(ranking.low, value),
        high=max(ranking.high, value),
    )
    if outside:
        return nxt, likelihood, True, 1.0
    score = math.log(1.0000000001 - likelihood) / _LOG_EPS
    return nxt, likelihood, False, min(max(score, 0.0), 1.0)


def ranking_to_json(ranking: Ranking) -> str:
    """The ranking state as the registry stores it (a JSON object; infinities as null)."""

    def num(x: float) -> str:  # repr: the shortest text that reads back to the same float
        return repr(x) if math.isfinite(x) else "null"

    recent = ",".join(map(repr, ranking.recent))
    return (  # written per observed series per request: formatted directly, not json.dumps
        f'{{"v":1,"recent":[{recent}],"count":{ranking.count},"mean":{ranking.mean!r},'
        f'"var":{ranking.var!r},"red":{"true" if ranking.red else "false"},'
        f'"low":{num(ranking.low)},"high":{num(ranking.high)}}}'
    )


def ranking_from_json(text: str | None) -> Ranking | None:
    """The stored ranking state; None for none or one this version cannot read."""
    import json

    if not text:
        return None
    try:
        doc = json.loads(text)
        if doc.get("v") != 1:
            return None
        low, high = doc["low"], doc["high"]
        return Ranking(
            recent=tuple(float(x) for x in doc["recent"]),
            count=int(doc["count"]),
            mean=float(doc["mean"]),
            var=float(doc["var"]),
            red=bool(doc["red"]),
            low=math.inf if low is None else float(low),
            high=-math.inf if high is None else float(high),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def step(
    state: StreamState,
    value: float,
    forecast: float,
    sigma: float,
    *,
    z_threshold: float,
    scale: float | None = None,
    config: DetectorConfig | None = None,
) -> tuple[StreamState, Verdict]:
    """Score ``value`` against the forecast made from ``state.window``; the next state.
    ``scale``: the series' normalisation scale for the ranking's raw score (``sigma`` when
    not given or not positive)."""
    cfg = config or DetectorConfig()
    if not math.isfinite(value):
        raise InputError(f"observation is not finite: {value}")
    if not (math.isfinite(forecast) and math.isfinite(sigma) and sigma > 0):
        raise InputError(f"model gave forecast {forecast}, sigma {sigma}: not usable")
    residual = value - forecast
    z = abs(residual) / sigma
    if not math.isfinite(z):
        raise InputError(f"residual {residual} over sigma {sigma} is not finite")
    unit = scale if scale is not None and math.isfinite(scale) and scale > 0 else sigma
    raw = math.erf(abs(residual) / unit / _SQRT2)
    ranking, likelihood, outside, rank_score = rank(state.ranking, value, raw, cfg)
    flagged = z >= z_threshold if cfg.flag == "z" else rank_score >= cfg.rank_flag
    run = state.run + 1 if flagged else 0
    replaced = flagged and run <= cfg.max_replaced
    verdict = Verdict(
        value=value,
        forecast=forecast,
        sigma=sigma,
        residual=residual,
        z=z,
        anomaly_score=math.erf(z / _SQRT2),  # score_from_z(z), without numpy per scalar
        magnitude=tail_magnitude(z),
        is_anomaly=flagged,
        replaced=replaced,
        anomaly_likelihood=likelihood,
        out_of_range=outside,
        rank_score=rank_score,
    )
    held = forecast if replaced else value
    return StreamState(append(state.window, held), run, ranking), verdict


def append(window: FloatArray, value: float, *, length: int | None = None) -> FloatArray:
    """``window`` with ``value`` appended, keeping its last ``length`` (default: its length)
    values; a window still shorter than ``length`` grows. The window's dtype is kept (the
    server holds float32 windows: the model's input type, half the memory)."""
    size = window.shape[0] if length is None else length
    out = np.empty(min(window.shape[0] + 1, size), dtype=window.dtype)
    out[:-1] = window[window.shape[0] + 1 - out.shape[0] :]
    out[-1] = value
    return out


def restore_state(
    values: Sequence[float] | FloatArray,
    *,
    window: int,
    flagged: Sequence[bool] | npt.NDArray[np.bool_],
    replacement: Sequence[float] | FloatArray,
    ranking: Ranking | None = None,
) -> StreamState:
    """The state after the stored tail ``values`` (oldest first), where ``flagged[i]`` says
    the i-th was flagged and ``replacement[i]`` is the forecast the window held in its place
    (NaN: the value itself). Give at least ``window`` values (all there are otherwise) and
    ``max_replaced + 1`` for an exact run. ``ranking``: the stored ranking state (default:
    a fresh one whose range is that of ``values``)."""
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
    if ranking is None:
        ranking = Ranking()
        if v.size:
            ranking = Ranking(low=float(v.min()), high=float(v.max()))
    return StreamState(np.ascontiguousarray(held), run, ranking)


def run_stream(
    state: StreamState,
    values: Sequence[float] | FloatArray,
    forecaster: Callable[[FloatArray], tuple[float, float]],
    *,
    z_threshold: float,
    scale: float | None = None,
    config: DetectorConfig | None = None,
) -> tuple[StreamState, list[Verdict]]:
    """:func:`step` over ``values`` in order, ``forecaster(window) -> (forecast, sigma)``
    giving the model's one-step forecast; the final state and one verdict per value."""
    out: list[Verdict] = []
    for value in np.asarray(values, dtype=np.float64).tolist():
        forecast, sigma = forecaster(state.window)
        state, verdict = step(
            state, value, forecast, sigma, z_threshold=z_threshold, scale=scale, config=config
        )
        out.append(verdict)
    return state, out
