"""Zero-shot models: the family initializer, un-adapted, for series too short to adapt.

A pure stage (no I/O), the sibling of :func:`mamlctl.maml.adaptation.adapt_histories`. A series
with ``L <= n < K + C`` points (one input window, but fewer than adaptation needs: K support
points plus C calibration points) is served by the initializer's parameters as they are::

    params          theta of the initializer (stacked [N, ...] stride-0 views: no copy per series)
    loc, scale      support_stats(v[n - m : n]) with m = min(n, K)   (as an adapted model's)
    residual_scale  r * scale, floored at RESIDUAL_FLOOR_REL * scale
    threshold       t

``(r, t)`` is the family's calibration prior, written at train time into the initializer's
train config as ``calibration_prior = {"residual_scale_rel": r, "threshold": t}`` (the typical
residual scale of an adapted series relative to its support scale, and the typical threshold;
a prior without ``threshold`` takes the score of ``min_z``).
Fallback when an initializer has none (older initializers): ``r = 1.0`` (residuals as large as
the series' own spread: a wide, conservative band) and ``t`` = the score of
:attr:`~mamlctl.maml.adaptation.AdaptConfig.min_z` (the floor every adapted threshold has).

Once the series holds ``K + C`` points, the adapt job adapts it as any other series.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mamlctl.domain import ADAPTED, ZERO_SHOT
from mamlctl.errors import InputError, TrainingError
from mamlctl.maml.adaptation import RESIDUAL_FLOOR_REL

if TYPE_CHECKING:
    from mamlctl.maml.adaptation import AdaptPlan
    from mamlctl.maml.initializer import Initializer

FloatArray = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

__all__ = ["ADAPTED", "ZERO_SHOT", "CalibrationPrior", "ZeroShot", "zero_shot_histories"]
#: Key of the calibration prior in an initializer's train config.
PRIOR_KEY = "calibration_prior"
#: Fallback residual scale relative to the support scale when the initializer has no prior.
FALLBACK_RESIDUAL_SCALE_REL = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationPrior:
    """A family's typical residual scale (relative to the support scale) and threshold."""

    residual_scale_rel: float
    threshold: float
    source: str  # "initializer" | "fallback"


@dataclass(frozen=True, slots=True, kw_only=True)
class ZeroShot:
    """N zero-shot series: the ``Adapted`` fields the export needs, plus the support used."""

    params: dict[str, F32]
    loc: FloatArray
    scale: FloatArray
    residual_scale: FloatArray
    threshold: FloatArray
    support_points: npt.NDArray[np.int64]  # m = min(n, K) points behind loc and scale
    prior: CalibrationPrior

    def __len__(self) -> int:
        return int(self.loc.shape[0])


def calibration_prior(train_config: Mapping[str, Any], *, min_z: float) -> CalibrationPrior:
    """The initializer's calibration prior, or the documented fallback (see module doc)."""
    from mamlctl.timeseries.anomaly import score_from_z

    raw = train_config.get(PRIOR_KEY)
    min_z_score = float(score_from_z(min_z))
    if not raw:
        return CalibrationPrior(
            residual_scale_rel=FALLBACK_RESIDUAL_SCALE_REL, threshold=min_z_score, source="fallback"
        )
    try:
        r = float(raw["residual_scale_rel"])
        t = float(raw["threshold"]) if raw.get("threshold") is not None else min_z_score
    except (TypeError, KeyError, ValueError):
        raise TrainingError(
            f"initializer's {PRIOR_KEY} is malformed ({raw!r}); expected "
            '{"residual_scale_rel": r > 0, "threshold": t in (0, 1]}'
        ) from None
    if not (math.isfinite(r) and r > 0 and math.isfinite(t) and 0 < t <= 1):
        raise TrainingError(
            f"initializer's {PRIOR_KEY} is out of range (residual_scale_rel={r}, threshold={t})"
        )
    return CalibrationPrior(residual_scale_rel=r, threshold=t, source="initializer")


def can_zero_shot(n_points: int, plan: AdaptPlan) -> bool:
    """True when a series of ``n_points`` is served zero-shot: one window, too few to adapt."""
    return bool(plan.window <= n_points < plan.min_points)


def zero_shot_histories(
    initializer: Initializer, histories: Sequence[npt.ArrayLike], *, plan: AdaptPlan
) -> ZeroShot:
    """Zero-shot models of series with ``L <= n < K + C`` points (raw values, oldest first).

    Vectorised over series: the support statistics are computed once per distinct support
    length (one :func:`~mamlctl.timeseries.scaling.support_stats` call over each group).
    """
    from mamlctl.timeseries.scaling import support_stats

    n = len(histories)
    if n == 0:
        raise InputError("no series to serve zero-shot")
    arrays = [np.asarray(h, dtype=np.float64) for h in histories]
    lengths = np.array([a.shape[0] if a.ndim == 1 else -1 for a in arrays], dtype=np.int64)
    bad = (lengths < plan.window) | (lengths >= plan.min_points)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"series #{i} has {arrays[i].shape} points; zero-shot takes L = {plan.window} "
            f"<= n < K + C = {plan.min_points} (longer series are adapted)"
        )
    m = np.minimum(lengths, plan.support)
    loc = np.empty(n, dtype=np.float64)
    scale = np.empty(n, dtype=np.float64)
    for size in np.unique(m):
        idx = np.flatnonzero(m == size)
        support = np.stack([arrays[i][-int(size) :] for i in idx])  # [n_size, size]
        if not np.all(np.isfinite(support)):
            j = int(idx[np.flatnonzero(~np.isfinite(support).all(axis=1))[0]])
            raise InputError(f"series #{j} has NaN or infinite values in its last {size} points")
        loc[idx], scale[idx] = support_stats(support)

    prior = calibration_prior(initializer.train_config, min_z=plan.min_z)
    residual_scale = np.maximum(prior.residual_scale_rel * scale, RESIDUAL_FLOOR_REL * scale)
    threshold = np.full(n, prior.threshold, dtype=np.float64)
    params = {}
    for name, p in initializer.params.items():
        theta = np.array(p.detach().cpu().numpy(), dtype=np.float32)  # one copy per job
        # a stride-0 view of theta (as adapt_histories' un-adapted parameters); writable like
        # theirs, since torch warns on read-only arrays (nothing writes to it)
        params[name] = np.lib.stride_tricks.as_strided(
            theta, shape=(n, *theta.shape), strides=(0, *theta.strides)
        )
    return ZeroShot(
        params=params,
        loc=loc,
        scale=scale,
        residual_scale=residual_scale,
        threshold=threshold,
        support_points=m,
        prior=prior,
    )
