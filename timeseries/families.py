"""Group series into named families by sampling interval and dominant period.

**Names.** A family is named after its interval (``hourly``, ``daily``, ``5min``, ``30min``,
... see :func:`~mamlctl.timeseries.periodicity.interval_label`) when its period is that
interval's *calendar cycle* (one day in samples: hourly 24, 5min 288, 10min 144, 30min 48;
daily 7, monthly 12, quarterly 4). Otherwise ``<interval>-p<P>`` for another significant period
and ``<interval>-nocycle`` for "no cycle"; without a known interval ``p<P>`` / ``nocycle``.

**Snapping.** A detected period within one lag or 5% of the calendar cycle joins the calendar
family (the series keeps its own detected period). Integer-lag ACF cannot separate 23.5 from
24 reliably, and a 48-point window covers both.

**Weekly.** Weekly data's yearly cycle is 52.18 weeks: no integer period stays aligned over
M4's long weekly series (a week of drift every ~5.5 years), and M4 itself scores weekly data
with m = 1. So every weekly series goes to ``weekly`` with *no cycle* (P = None), whatever the
detector saw (~13% of M4 Weekly show a 52 hill; the detection is still stored per series).

**Defaults** (documented choices; a user can change a family with ``families create``):

* horizon H: the M4 horizons by interval (hourly 48, daily 14, weekly 13, monthly 18,
  quarterly 8, yearly 6); else one hour's worth of a day cycle, ``max(1, P // 24)``; else 8;
* window L: ``max(2P, 2H)`` (two cycles, at least twice the horizon), capped at 512 by
  falling back to ``max(P, 2H)`` then 512; weekly 52 (a year); no cycle ``max(2H, 32)``;
* support K: ``L + P`` raw points, one window plus one period of origins: with partial-horizon
  support pairs (:mod:`mamlctl.timeseries.windows`) they hold P window origins, one full cycle
  of phases (no cycle: ``L + H``). Initializers trained with the older full pairs needed
  ``L + H + P - 1``.

So hourly is P=24, L=96, H=48, K=120; 5min is P=288, L=288, H=12, K=576; weekly is P=None,
L=52, H=13, K=65.

**Detection never files a series into a family its data cannot serve.** A series shorter than
its family's window L gets no family (the note says what it would need). A series whose
detected period is not its interval's calendar cycle would found or join an odd family
(``hourly-p116``) that it must be able to train alone: when it has fewer points than
:func:`training_need` of that family (K + 1 + H, held out in time), it is filed under the
calendar family instead (no calendar cycle: the no-cycle family) and the note says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mamlctl.domain import Family, FloatArray
from mamlctl.timeseries.periodicity import PeriodEstimate, detect_period, interval_label

DAY = 86400.0
#: Calendar cycle per interval label, in samples.
CALENDAR_PERIOD: dict[str, int | None] = {
    "daily": 7,
    "weekly": None,
    "monthly": 12,
    "quarterly": 4,
    "yearly": None,
}
#: Intervals whose series all join one no-cycle family (see module docstring).
ALWAYS_NO_CYCLE = frozenset({"weekly", "yearly"})
M4_HORIZON = {"hourly": 48, "daily": 14, "weekly": 13, "monthly": 18, "quarterly": 8, "yearly": 6}
WINDOW_OVERRIDE = {"weekly": 52}
MAX_WINDOW = 512


def calendar_period(interval_seconds: float | None) -> int | None:
    """One day in samples for sub-daily intervals that divide a day; table values otherwise."""
    label = interval_label(interval_seconds)
    if label is None or interval_seconds is None:
        return None
    if label in CALENDAR_PERIOD:
        return CALENDAR_PERIOD[label]
    per_day = DAY / interval_seconds
    if interval_seconds < DAY and abs(per_day - round(per_day)) < 1e-9 and round(per_day) >= 2:
        return round(per_day)
    return None


def family_defaults(name: str, *, period: int | None, interval_seconds: float | None) -> Family:
    """A family with the documented L/H/K defaults for its period and interval."""
    label = interval_label(interval_seconds)
    if label in M4_HORIZON:
        horizon = M4_HORIZON[label]
    elif period is not None:
        horizon = max(1, period // 24)
    else:
        horizon = 8
    if label in WINDOW_OVERRIDE:
        window = WINDOW_OVERRIDE[label]
    elif period is not None:
        window = max(2 * period, 2 * horizon)
        if window > MAX_WINDOW:
            window = max(period, 2 * horizon)
        window = min(window, MAX_WINDOW)
    else:
        window = max(2 * horizon, 32)
    support = window + (period if period is not None else horizon)
    return Family(
        name=name,
        period=period,
        interval_seconds=interval_seconds,
        window=window,
        horizon=horizon,
        support=support,
    )


def with_window(family: Family, window: int) -> Family:
    """``family`` with input window L = ``window`` and the support rule applied to it
    (K = L + P; no cycle L + H): what ``families create -L`` gives a family of few points."""
    from dataclasses import replace

    from mamlctl.errors import InputError

    if window < 1:
        raise InputError(f"window must be >= 1, got {window}")
    step = family.period if family.period is not None else family.horizon
    return replace(family, window=window, support=window + step)


def _snaps(period: int, target: int) -> bool:
    return abs(period - target) <= max(1, round(0.05 * target))


def family_for(period: int | None, interval_seconds: float | None) -> Family:
    """The named family (with defaults) a series of this interval and period belongs to."""
    label = interval_label(interval_seconds)
    if label is None:
        name = "nocycle" if period is None else f"p{period}"
        return family_defaults(name, period=period, interval_seconds=None)
    if label in ALWAYS_NO_CYCLE:
        return family_defaults(label, period=None, interval_seconds=interval_seconds)
    cal = calendar_period(interval_seconds)
    if period is None:
        return family_defaults(f"{label}-nocycle", period=None, interval_seconds=interval_seconds)
    if cal is not None and _snaps(period, cal):
        return family_defaults(label, period=cal, interval_seconds=interval_seconds)
    return family_defaults(f"{label}-p{period}", period=period, interval_seconds=interval_seconds)


@dataclass(frozen=True, slots=True, kw_only=True)
class Detection:
    """What detection concluded for one series. ``family`` None: too short for its family."""

    series_id: str
    n_points: int
    interval_seconds: float | None
    estimate: PeriodEstimate
    family: Family | None
    note: str


def max_period_for(n: int, interval_seconds: float | None) -> int:
    """Search up to a week of samples (at least 4 calendar cycles), never past n // 2."""
    cal = calendar_period(interval_seconds)
    if interval_seconds is not None and interval_seconds < 7 * DAY:
        week = round(7 * DAY / interval_seconds)
        return max(2, min(n // 2, max(week, 4 * (cal or 0))))
    if cal is not None:
        return max(2, min(n // 2, 4 * cal))
    return max(2, min(n // 2, 1000))


def training_need(family: Family) -> int:
    """Points one series needs to train ``family`` alone with its default K (partial pairs,
    held out in time): K support points and one query point before the last H, and more than
    P points before them for the MASE scale."""
    return max(family.support + 1, (family.period or 1) + 1) + family.horizon


def detect_family(
    series_id: str, values: FloatArray, *, interval_seconds: float | None
) -> Detection:
    """Detect the period of one series (calendar cycle as a hint) and name its family."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.shape[0])
    cal = calendar_period(interval_seconds)
    est = detect_period(
        x,
        max_period=max_period_for(n, interval_seconds),
        hints=(cal,) if cal is not None else (),
    )
    fam = family_for(est.period, interval_seconds)
    note = est.reason
    if fam.period is not None and fam.period != cal and n < training_need(fam):
        fallback = family_for(cal, interval_seconds)
        note = (
            f"period {fam.period} detected, but family {fam.name} needs {training_need(fam)} "
            f"points to train (K={fam.support} + 1 + H={fam.horizon}); {n} here, so filed "
            f"under {fallback.name}"
        )
        fam = fallback
    if n < fam.window:
        return Detection(
            series_id=series_id,
            n_points=n,
            interval_seconds=interval_seconds,
            estimate=est,
            family=None,
            note=(
                f"too short for {fam.name} ({n} < L = {fam.window} points for one window; "
                f"adapting needs K = {fam.support})"
            ),
        )
    return Detection(
        series_id=series_id,
        n_points=n,
        interval_seconds=interval_seconds,
        estimate=est,
        family=fam,
        note=note,
    )


def group(detections: Sequence[Detection]) -> dict[str, list[str]]:
    """Family name -> series ids, in the order given (series without a family left out)."""
    out: dict[str, list[str]] = {}
    for d in detections:
        if d.family is not None:
            out.setdefault(d.family.name, []).append(d.series_id)
    return out
