"""Validate a series before it reaches the registry.

Rules (each failure is one :class:`~mamlctl.errors.IngestError` naming file, series, problem):

* at least one value; no infinite value;
* **NaN policy** ``reject`` (default): any missing/NaN value is an error, because a silently
  filled gap would become a "historical" value the model trains and scores on.
  ``interpolate``: NaN runs are filled linearly between their neighbours; a run at an edge
  takes the nearest present value. The count of filled values is reported to the user;
* timestamps (when present): none missing; **order policy** ``strict`` (default): strictly
  increasing, a duplicate or a step back is an error, never silently sorted. ``file``: every
  row is kept in file order and positions define the series' order; timestamps are stored as
  given (real data has them: 7 of NAB's 58 files repeat timestamps around clock changes, one
  steps back an hour). The count of such steps is reported to the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from mamlctl.domain import Series
from mamlctl.errors import IngestError

NanPolicy = Literal["reject", "interpolate"]
NAN_POLICIES: tuple[NanPolicy, ...] = ("reject", "interpolate")
OrderPolicy = Literal["strict", "file"]
ORDER_POLICIES: tuple[OrderPolicy, ...] = ("strict", "file")


@dataclass(frozen=True, slots=True, kw_only=True)
class Validated:
    series: Series
    interpolated: int
    #: Timestamp steps that were not increasing (kept under the ``file`` order policy).
    unordered: int = 0


def _where(series: Series, i: int) -> str:
    if series.timestamps is not None:
        return f"position {i} ({np.datetime_as_string(series.timestamps[i], unit='s')})"
    return f"position {i}"


def validate_series(
    series: Series, *, source: str, nan: NanPolicy = "reject", order: OrderPolicy = "strict"
) -> Validated:
    """Check (and with ``nan="interpolate"`` fill) one series; see the module rules."""
    sid = series.series_id

    def fail(problem: str) -> IngestError:
        return IngestError(f"{source}: series {sid}: {problem}")

    if not sid or len(sid) > 255:
        raise fail("series id must be 1-255 characters")
    values = np.asarray(series.values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise fail("no values")
    inf = np.flatnonzero(np.isinf(values))
    if inf.size:
        raise fail(f"infinite value at {_where(series, int(inf[0]))}")
    nan_at = np.flatnonzero(np.isnan(values))
    interpolated = 0
    unordered = 0
    if nan_at.size:
        if nan == "reject":
            raise fail(
                f"missing/NaN value at {_where(series, int(nan_at[0]))} ({nan_at.size} in all); "
                "NaN policy is reject: fix the data or pass --nan interpolate"
            )
        if nan_at.size == values.size:
            raise fail("every value is missing/NaN; nothing to interpolate")
        present = np.flatnonzero(~np.isnan(values))
        values = values.copy()
        values[nan_at] = np.interp(nan_at, present, values[present])
        interpolated = int(nan_at.size)
    ts = series.timestamps
    if ts is not None:
        if ts.shape != values.shape:
            raise fail(f"{ts.shape[0]} timestamps for {values.shape[0]} values")
        ts = ts.astype("datetime64[us]")
        nat = np.flatnonzero(np.isnat(ts))
        if nat.size:
            raise fail(f"missing timestamp at position {int(nat[0])}")
        step = np.diff(ts)
        unordered = int(np.count_nonzero(step <= np.timedelta64(0, "us")))
        if order == "strict":
            dup = np.flatnonzero(step == np.timedelta64(0, "us"))
            if dup.size:
                i = int(dup[0]) + 1
                raise fail(
                    f"duplicate timestamp {np.datetime_as_string(ts[i], unit='s')} at position "
                    f"{i}; pass --order file to keep rows in file order"
                )
            back = np.flatnonzero(step < np.timedelta64(0, "us"))
            if back.size:
                i = int(back[0]) + 1
                raise fail(
                    f"non-monotonic timestamps: {np.datetime_as_string(ts[i], unit='s')} at "
                    f"position {i} is earlier than {np.datetime_as_string(ts[i - 1], unit='s')}; "
                    "pass --order file to keep rows in file order"
                )
    # -0.0 -> 0.0: SQLite stores negative zero as zero; normalising keeps backends identical.
    values = values + 0.0
    return Validated(
        series=Series(series_id=sid, values=values, timestamps=ts, family=series.family),
        interpolated=interpolated,
        unordered=unordered,
    )
