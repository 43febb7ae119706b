"""Zero-shot models: the family initializer, un-adapted, for series too short to adapt.

A pure stage (no I/O), the sibling of :func:`mamlctl.maml.adaptation.adapt_histories`. A series
with ``L <= n < K`` points (one input window, but fewer than the K support points adaptation
needs) is served by the initializer's parameters as they are::

    params          theta of the initializer (stacked [N, ...] stride-0 views: no copy per series)
    loc, scale      support_stats(v[n - m : n]) with m = min(n, K)   (as an adapted model's)
    residual_scale  r * scale, floored at RESIDUAL_FLOOR_REL * scale
    threshold       t

``(r, t)`` is the family's calibration prior (:class:`mamlctl.maml.calibration.
CalibrationPrior`, carried by the adaptation plan): written at train time into the
initializer's train config, with the documented fallback for initializers without one
(``r = 1.0``, ``t`` = the score of ``min_z``); a prior without ``threshold`` takes the score of
``min_z``.

Once the series holds K points, the adapt job adapts it as any other series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from mamlctl.domain import ADAPTED, ZERO_SHOT
from mamlctl.errors import InputError
from mamlctl.maml.adaptation import RESIDUAL_FLOOR_REL

if TYPE_CHECKING:
    from mamlctl.maml.adaptation import AdaptPlan
    from mamlctl.maml.initializer import Initializer

FloatArray = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

__all__ = ["ADAPTED", "ZERO_SHOT", "ZeroShot", "zero_shot_histories"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ZeroShot:
    """N zero-shot series: the ``Adapted`` fields the export needs, plus the support used."""

    params: dict[str, F32]
    loc: FloatArray
    scale: FloatArray
    residual_scale: FloatArray
    threshold: FloatArray
    support_points: npt.NDArray[np.int64]  # m = min(n, K) points behind loc and scale
    #: "initializer" when the prior was recorded at train time, else "fallback"
    prior_source: str

    def __len__(self) -> int:
        return int(self.loc.shape[0])


def can_zero_shot(n_points: int, plan: AdaptPlan) -> bool:
    """True when a series of ``n_points`` is served zero-shot: one window, too few to adapt."""
    return bool(plan.window <= n_points < plan.min_points)


def zero_shot_histories(
    initializer: Initializer, histories: Sequence[npt.ArrayLike], *, plan: AdaptPlan
) -> ZeroShot:
    """Zero-shot models of series with ``L <= n < K`` points (raw values, oldest first).

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
            f"<= n < K = {plan.min_points} (longer series are adapted)"
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

    from mamlctl.timeseries.anomaly import score_from_z

    prior = plan.prior  # the initializer's calibration prior, or the documented fallback
    residual_scale = np.maximum(prior.residual_scale_rel * scale, RESIDUAL_FLOOR_REL * scale)
    t = float(score_from_z(plan.min_z)) if prior.threshold is None else prior.threshold
    threshold = np.full(n, t, dtype=np.float64)
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
        prior_source="initializer" if plan.prior_recorded else "fallback",
    )
