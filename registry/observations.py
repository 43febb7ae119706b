"""Persistence of the observe loop (``POST /v1/observe``): read each series' stored tail, look up
old points, and write one request's points, series counters and anomaly records.

The caller owns the session and commits once per request (:func:`write_observations` is one
batch of bulk statements, no per-point round trip). Points are the same rows ingest writes
(:func:`mamlctl.registry.ingest.insert_points`): positions continue from the series' stored
length, so an observed point is indistinguishable from an ingested one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from mamlctl.registry.ingest import insert_points
from mamlctl.registry.series_queries import IN_CHUNK
from mamlctl.registry.tables import AnomalyRow, PointRow, SeriesRow, utcnow

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredTail:
    """The last stored points of a series (oldest first) and what the observe loop recorded
    about them: ``flagged`` (an anomaly record exists) and ``replacement`` (the forecast the
    served window held in the point's place, NaN when none)."""

    series_pk: int
    series_id: str
    n_points: int
    has_ts: bool
    first_ts: datetime | None
    last_ts: datetime | None
    interval_seconds: float | None
    values: FloatArray
    flagged: npt.NDArray[np.bool_]
    replacement: FloatArray
    #: The stored ranking state (JSON), None before the first observation.
    detector_state: str | None = None
    #: The range of every stored value (NaN for none).
    low: float = float("nan")
    high: float = float("nan")


@dataclass(frozen=True, slots=True, kw_only=True)
class NewPoint:
    series_pk: int
    position: int
    ts: datetime | None
    value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesCounters:
    """A series row's counters after a request: its length and first/last timestamps."""

    series_pk: int
    n_points: int
    first_ts: datetime | None
    last_ts: datetime | None
    detector_state: str | None = None


def load_tails(session: Session, lengths: dict[str, int]) -> dict[str, StoredTail]:
    """The last ``lengths[sid]`` points of each named series; unknown ids are left out."""
    ids = list(lengths)
    rows: list[SeriesRow] = []
    for i in range(0, len(ids), IN_CHUNK):
        rows += session.scalars(
            select(SeriesRow).where(SeriesRow.series_id.in_(ids[i : i + IN_CHUNK]))
        )
    conn = session.connection()
    out: dict[str, StoredTail] = {}
    for row in rows:
        start = max(0, row.n_points - lengths[row.series_id])
        points = conn.execute(
            select(PointRow.position, PointRow.value)
            .where(PointRow.series_pk == row.id, PointRow.position >= start)
            .order_by(PointRow.position)
        ).all()
        values = np.array([p[1] for p in points], dtype=np.float64)
        flagged = np.zeros(values.shape[0], dtype=np.bool_)
        replacement = np.full(values.shape[0], np.nan)
        for position, forecast, replaced in conn.execute(
            select(AnomalyRow.position, AnomalyRow.forecast, AnomalyRow.replaced).where(
                AnomalyRow.series_pk == row.id, AnomalyRow.position >= start
            )
        ):
            k = position - start
            if 0 <= k < values.shape[0]:
                flagged[k] = True
                if replaced:
                    replacement[k] = forecast
        low = high = None
        if row.detector_state is None:  # a fresh ranking state takes the stored values' range
            low, high = conn.execute(
                select(func.min(PointRow.value), func.max(PointRow.value)).where(
                    PointRow.series_pk == row.id
                )
            ).one()
        out[row.series_id] = StoredTail(
            series_pk=row.id,
            series_id=row.series_id,
            n_points=row.n_points,
            has_ts=row.first_ts is not None,
            first_ts=row.first_ts,
            last_ts=row.last_ts,
            interval_seconds=row.interval_seconds,
            values=values,
            flagged=flagged,
            replacement=replacement,
            detector_state=row.detector_state,
            low=float("nan") if low is None else float(low),
            high=float("nan") if high is None else float(high),
        )
    return out


def find_points(
    session: Session, wanted: Iterable[tuple[int, datetime | int]]
) -> dict[tuple[int, datetime | int], float]:
    """Stored values at ``(series_pk, timestamp or position)``; absent keys are not stored.
    One query per series asked about (only old timestamps are looked up: duplicates)."""
    by_pk: dict[int, list[datetime | int]] = {}
    for pk, key in wanted:
        by_pk.setdefault(pk, []).append(key)
    out: dict[tuple[int, datetime | int], float] = {}
    for pk, keys in by_pk.items():
        ints = [k for k in keys if isinstance(k, int)]
        times = [k for k in keys if isinstance(k, datetime)]
        if ints:
            for pos, value in session.execute(
                select(PointRow.position, PointRow.value).where(
                    PointRow.series_pk == pk, PointRow.position.in_(ints)
                )
            ):
                out[(pk, pos)] = value
        if times:
            for ts, value in session.execute(
                select(PointRow.ts, PointRow.value).where(
                    PointRow.series_pk == pk, PointRow.ts.in_(times)
                )
            ):
                out[(pk, ts)] = value
    return out


def write_observations(
    session: Session,
    points: Sequence[NewPoint],
    counters: Sequence[SeriesCounters],
    anomalies: Sequence[dict[str, Any]],
) -> list[int]:
    """Insert ``points`` and ``anomalies`` (column dicts of :class:`AnomalyRow`, without
    ``id``/``status``/``created_at``) and update the series' counters: a handful of bulk
    statements. Returns the new anomaly ids, in order."""
    if points:
        with_ts = [p for p in points if p.ts is not None]
        without = [p for p in points if p.ts is None]
        pk_parts, pos_parts, val_parts, ts_parts = [], [], [], []
        for group, has_ts in ((with_ts, True), (without, False)):
            if not group:
                continue
            pk_parts.append(np.array([p.series_pk for p in group], dtype=np.int64))
            pos_parts.append(np.array([p.position for p in group], dtype=np.int64))
            val_parts.append(np.array([p.value for p in group], dtype=np.float64))
            ts_parts.append(
                np.array([p.ts for p in group], dtype="datetime64[us]") if has_ts else None
            )
        insert_points(session, pk_parts, pos_parts, val_parts, ts_parts)
    now = utcnow()
    if counters:
        session.connection().execute(
            update(SeriesRow)
            .where(SeriesRow.id == bindparam("pk"))
            .values(
                n_points=bindparam("n"),
                first_ts=bindparam("first"),
                last_ts=bindparam("last"),
                detector_state=bindparam("state"),
                updated_at=now,
            ),
            [
                {
                    "pk": c.series_pk,
                    "n": c.n_points,
                    "first": c.first_ts,
                    "last": c.last_ts,
                    "state": c.detector_state,
                }
                for c in counters
            ],
        )
    if not anomalies:
        return []
    rows = [{**a, "status": "open", "created_at": now} for a in anomalies]
    result = session.execute(
        insert(AnomalyRow).returning(AnomalyRow.id, sort_by_parameter_order=True), rows
    )
    return [int(i) for i in result.scalars()]
