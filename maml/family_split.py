"""The held-out split of a family's series, the data fingerprint and the validation set.

Pure (no I/O). Validation is what the product does daily: adapt on the K most recent points of
each held-out series' history and forecast its last H points.

**Held out by series or in time.** With at least :data:`MIN_SERIES` usable series, whole
series are held out: the series whose sha256(id) sort first. With fewer (a family of 1-3
series) the hold-out is *in time*: the last H points of every series are its validation target
(adapted on the K points before them), and training draws tasks only from the points before
those last H, so no validation target is ever trained on (``holdout = "time"``, recorded with
the initializer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from mamlctl.domain import Family, Series
from mamlctl.errors import TrainingError
from mamlctl.maml.family_data import F32, MIN_SERIES, FloatArray, ResolvedPlan


def fingerprint(series: Sequence[Series]) -> str:
    """sha256 (16 hex) over the series ids and their exact float64 values, in id order."""
    digest = hashlib.sha256()
    for s in sorted(series, key=lambda s: s.series_id):
        digest.update(s.series_id.encode())
        digest.update(np.ascontiguousarray(s.values, dtype="<f8").tobytes())
    return digest.hexdigest()[:16]


def _holdout_key(series_id: str) -> str:
    return hashlib.sha256(series_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationSet:
    """Held-out series, adapted on their history's K newest points, forecasting the last H
    (partial plans: ``K - L`` pairs with NaN targets past the history's end)."""

    series_ids: tuple[str, ...]
    histories: tuple[FloatArray, ...]  # raw values before the forecast origin
    actual: FloatArray  # [N, H] raw
    support_x: F32  # [N, P, L] normalised
    support_y: F32  # [N, P, H]
    query_x: F32  # [N, 1, L] the last L history values, normalised
    loc: FloatArray  # [N]
    scale: FloatArray  # [N]


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilyData:
    plan: ResolvedPlan
    train: tuple[Series, ...]
    validation: ValidationSet
    fingerprint: str
    skipped_short: int


def prepare(family: Family, series: Sequence[Series], plan: ResolvedPlan) -> FamilyData:
    """Split the family's series into training and held-out sets; TrainingError if impossible.

    With at least :data:`MIN_SERIES` usable series the held-out subset is deterministic: the
    series whose sha256(id) sort first (independent of the seed and of ingest order),
    ``holdout_fraction`` of them, at most ``max_holdout``. With fewer, every series is held out
    in time (see the module doc).
    """
    need = max(plan.task_span, plan.validation_span)
    usable = [s for s in series if len(s) >= need]
    if len(usable) < MIN_SERIES:
        return _prepare_in_time(family, series, plan)
    ranked = sorted(usable, key=lambda s: _holdout_key(s.series_id))
    n_hold = min(plan.config.max_holdout, max(1, round(plan.config.holdout_fraction * len(ranked))))
    n_hold = min(n_hold, len(ranked) - (MIN_SERIES - 1))
    held = {s.series_id for s in ranked[:n_hold]}
    train = tuple(s for s in usable if s.series_id not in held)
    if plan.nonnegative is None:
        plan = replace(plan, nonnegative=all(float(np.min(s.values)) >= 0 for s in train))
    validation = validation_set([s for s in usable if s.series_id in held], plan)
    return FamilyData(
        plan=plan,
        train=train,
        validation=validation,
        fingerprint=fingerprint(usable),
        skipped_short=len(series) - len(usable),
    )


def _prepare_in_time(family: Family, series: Sequence[Series], plan: ResolvedPlan) -> FamilyData:
    """Fewer than MIN_SERIES usable series: hold out the last H points of every series."""
    need, h = plan.time_holdout_span, plan.horizon
    usable = [s for s in series if len(s) >= need]
    if not usable:
        longest = max((len(s) for s in series), default=0)
        raise TrainingError(
            f"family {family.name} has no series with the {need} points training needs "
            f"(K={plan.support_points} support points, then a query point, then the last "
            f"H={h} held out; {len(series)} series, the longest has {longest} points)"
        )
    train = tuple(
        Series(series_id=s.series_id, values=np.asarray(s.values)[:-h], timestamps=None)
        for s in usable
    )
    plan = replace(plan, holdout="time")
    if plan.nonnegative is None:
        plan = replace(plan, nonnegative=all(float(np.min(s.values)) >= 0 for s in train))
    return FamilyData(
        plan=plan,
        train=train,
        validation=validation_set(usable, plan),
        fingerprint=fingerprint(usable),
        skipped_short=len(series) - len(usable),
    )


def validation_set(series: Sequence[Series], plan: ResolvedPlan) -> ValidationSet:
    from mamlctl.maml.adaptation import support_tasks

    h, k, window = plan.horizon, plan.support_points, plan.window
    histories = tuple(np.asarray(s.values[:-h], dtype=np.float64) for s in series)
    actual = np.stack([np.asarray(s.values[-h:], dtype=np.float64) for s in series])
    stretches = np.stack([hist[-k:] for hist in histories])
    sx, sy, loc, scale = support_tasks(stretches, window=window, horizon=h, partial=plan.partial)
    last = np.stack([hist[-window:] for hist in histories])
    qx = ((last - loc[:, None]) / scale[:, None]).astype(np.float32)[:, None, :]
    return ValidationSet(
        series_ids=tuple(s.series_id for s in series),
        histories=histories,
        actual=actual,
        support_x=sx,
        support_y=sy,
        query_x=qx,
        loc=loc,
        scale=scale,
    )
