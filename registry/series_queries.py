"""Series and point queries. Every function takes the caller's session and never commits.

Points are read by primary-key range on ``(series_pk, position)``; values come back as float64
numpy arrays in time order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from mamlctl.domain import FloatArray, Series, SeriesInfo
from mamlctl.errors import InputError, NotFoundError
from mamlctl.registry.family_queries import family_row
from mamlctl.registry.tables import FamilyRow, PointRow, SeriesRow

IntArray = npt.NDArray[np.int64]

#: Keep IN (...) lists below every backend's bound-parameter limit.
IN_CHUNK = 500


def raw_point_values(conn: Any, pks: Sequence[int]) -> npt.NDArray[np.float64]:
    """``[[series_pk, value], ...]`` ordered by (series_pk, position), through the DBAPI cursor
    (SQLAlchemy's row objects would cost more than the query)."""
    if not pks:
        return np.empty((0, 2), dtype=np.float64)
    dialect = conn.dialect.name
    raw: Any = conn.connection.driver_connection
    if dialect not in ("sqlite", "postgresql"):
        res = conn.execute(
            select(PointRow.series_pk, PointRow.value)
            .where(PointRow.series_pk.in_(list(pks)))
            .order_by(PointRow.series_pk, PointRow.position)
        ).all()
        return np.array([tuple(r) for r in res], dtype=np.float64).reshape(-1, 2)
    mark = "?" if dialect == "sqlite" else "%s"
    sql = (
        "SELECT series_pk, value FROM points WHERE series_pk IN "
        f"({', '.join([mark] * len(pks))}) ORDER BY series_pk, position"
    )
    cur = raw.cursor()
    try:
        cur.execute(sql, list(pks))
        rows = cur.fetchall()
    finally:
        cur.close()
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def _info(row: SeriesRow, family: str | None) -> SeriesInfo:
    has_ts = row.first_ts is not None
    return SeriesInfo(
        series_id=row.series_id,
        family=family,
        n_points=row.n_points,
        first_ts=row.first_ts if has_ts else (0 if row.n_points else None),
        last_ts=row.last_ts if has_ts else (row.n_points - 1 if row.n_points else None),
        interval_seconds=row.interval_seconds,
        detected_period=row.detected_period,
        source=row.source,
        family_origin=row.family_origin,
        period_strength=row.period_strength,
    )


def _series_select() -> Select[Any]:
    return select(SeriesRow, FamilyRow.name).outerjoin(
        FamilyRow, SeriesRow.family_id == FamilyRow.id
    )


def series_row(session: Session, series_id: str) -> SeriesRow:
    row = session.scalars(select(SeriesRow).where(SeriesRow.series_id == series_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"unknown series {series_id!r} (see `mamlctl series list`)")
    return row


def get_series(session: Session, series_id: str) -> SeriesInfo:
    """Summary of one series; :class:`NotFoundError` when unknown."""
    found = session.execute(_series_select().where(SeriesRow.series_id == series_id)).one_or_none()
    if found is None:
        raise NotFoundError(f"unknown series {series_id!r} (see `mamlctl series list`)")
    return _info(found[0], found[1])


def list_series(
    session: Session,
    *,
    family: str | None = None,
    unassigned: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> list[SeriesInfo]:
    """Series ordered by id; ``family`` filters (must exist), ``unassigned`` keeps family-less."""
    stmt = _series_select().order_by(SeriesRow.id)
    if family is not None:
        stmt = stmt.where(SeriesRow.family_id == family_row(session, family).id)
    if unassigned:
        stmt = stmt.where(SeriesRow.family_id.is_(None))
    if offset:
        stmt = stmt.offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [_info(r, name) for r, name in session.execute(stmt).all()]


def count_series(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(SeriesRow)) or 0)


def count_points(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(PointRow)) or 0)


def series_ids_in_family(session: Session, family: str) -> list[str]:
    """Ids of the family's series, in ingest order; :class:`NotFoundError` for unknown family."""
    fam = family_row(session, family)
    stmt = select(SeriesRow.series_id).where(SeriesRow.family_id == fam.id).order_by(SeriesRow.id)
    return list(session.scalars(stmt).all())


def last_points(session: Session, series_id: str, n: int) -> tuple[FloatArray, IntArray]:
    """The last ``n`` values of a series (fewer if it is shorter) and their positions, in order.

    One backward range scan of the points primary key.
    """
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    conn = session.connection()
    pk = conn.execute(select(SeriesRow.id).where(SeriesRow.series_id == series_id)).scalar()
    if pk is None:
        raise NotFoundError(f"unknown series {series_id!r} (see `mamlctl series list`)")
    # Core execution on the session's connection (the ORM result layer is ~3x slower here).
    rows = conn.execute(
        select(PointRow.position, PointRow.value)
        .where(PointRow.series_pk == pk)
        .order_by(PointRow.position.desc())
        .limit(n)
    ).all()
    positions = np.fromiter((r[0] for r in reversed(rows)), dtype=np.int64, count=len(rows))
    values = np.fromiter((r[1] for r in reversed(rows)), dtype=np.float64, count=len(rows))
    return values, positions


def series_values(
    session: Session, series_id: str, *, start: int | None = None, stop: int | None = None
) -> FloatArray:
    """Values at positions ``start <= position < stop`` (default: all), in time order."""
    pk = series_row(session, series_id).id
    stmt = select(PointRow.value).where(PointRow.series_pk == pk).order_by(PointRow.position)
    if start is not None:
        stmt = stmt.where(PointRow.position >= start)
    if stop is not None:
        stmt = stmt.where(PointRow.position < stop)
    return np.asarray(session.connection().execute(stmt).scalars().all(), dtype=np.float64)


def _to_datetime64(values: Sequence[datetime | None]) -> npt.NDArray[np.datetime64] | None:
    if not values or any(v is None for v in values):
        return None
    return np.array(values, dtype="datetime64[us]")


def load_series(session: Session, series_id: str) -> Series:
    """The whole series with its family name and timestamps (None for integer positions)."""
    return load_many_series(session, [series_id])[0]


def load_many_series(session: Session, series_ids: Sequence[str]) -> list[Series]:
    """Several whole series in the order asked, with few queries (chunks of ids)."""
    out: dict[str, Series] = {}
    for i in range(0, len(series_ids), IN_CHUNK):
        chunk = list(series_ids[i : i + IN_CHUNK])
        meta = session.execute(
            select(SeriesRow.id, SeriesRow.series_id, SeriesRow.first_ts, FamilyRow.name)
            .outerjoin(FamilyRow, SeriesRow.family_id == FamilyRow.id)
            .where(SeriesRow.series_id.in_(chunk))
        ).all()
        by_pk = {pk: (sid, first_ts is not None, fam) for pk, sid, first_ts, fam in meta}
        missing = set(chunk) - {m[1] for m in meta}
        if missing:
            raise NotFoundError(
                f"unknown series {sorted(missing)[0]!r} (see `mamlctl series list`)"
            )
        pks = list(by_pk)
        table = raw_point_values(session.connection(), pks)
        pk_col = table[:, 0].astype(np.int64)
        starts = np.concatenate(([0], np.flatnonzero(np.diff(pk_col)) + 1)).astype(np.int64)
        ranges = {int(pk_col[a]): int(a) for a in starts[: len(starts) if pk_col.size else 0]}
        counts = (
            dict(zip(*np.unique(pk_col, return_counts=True), strict=True)) if pk_col.size else {}
        )
        with_ts = [pk for pk, (_, has_ts, _) in by_pk.items() if has_ts]
        tss: dict[int, list[datetime | None]] = {pk: [] for pk in with_ts}
        if with_ts:
            stmt = (
                select(PointRow.series_pk, PointRow.ts)
                .where(PointRow.series_pk.in_(with_ts))
                .order_by(PointRow.series_pk, PointRow.position)
            )
            for pk, ts in session.connection().execute(stmt).all():
                tss[pk].append(ts)
        for pk, (sid, has_ts, fam) in by_pk.items():
            a = ranges.get(pk, 0)
            n = int(counts.get(pk, 0))
            out[sid] = Series(
                series_id=sid,
                values=np.ascontiguousarray(table[a : a + n, 1]),
                timestamps=_to_datetime64(tss[pk]) if has_ts else None,
                family=fam,
            )
    return [out[s] for s in series_ids]


def load_family_series(
    session: Session, family: str, *, min_points: int | None = None
) -> list[Series]:
    """Every series of a family (with at least ``min_points`` points), in ingest order."""
    fam = family_row(session, family)
    stmt = select(SeriesRow.series_id).where(SeriesRow.family_id == fam.id).order_by(SeriesRow.id)
    if min_points is not None:
        stmt = stmt.where(SeriesRow.n_points >= min_points)
    return load_many_series(session, list(session.scalars(stmt).all()))


def assign_family(
    session: Session, family: str, series_ids: Sequence[str], *, origin: str = "assigned"
) -> int:
    """Put series into an existing family; every series must hold at least one window (L
    points): with fewer than K it is served zero-shot by the family's initializer.

    Raises :class:`NotFoundError` (unknown family or series) or :class:`InputError` (too short)
    before changing anything. Returns the number of series assigned.
    """
    fam = family_row(session, family)
    need = fam.window
    rows: list[SeriesRow] = []
    for i in range(0, len(series_ids), IN_CHUNK):
        chunk = list(series_ids[i : i + IN_CHUNK])
        found = session.scalars(select(SeriesRow).where(SeriesRow.series_id.in_(chunk))).all()
        missing = set(chunk) - {r.series_id for r in found}
        if missing:
            raise NotFoundError(
                f"unknown series {sorted(missing)[0]!r} (see `mamlctl series list`)"
            )
        rows.extend(found)
    for r in rows:
        if r.n_points < need:
            raise InputError(
                f"series {r.series_id} has {r.n_points} points, fewer than family {fam.name}'s "
                f"window L = {need}: ingest more points or pick another family"
            )
    pks = [r.id for r in rows]
    for i in range(0, len(pks), IN_CHUNK):
        session.execute(
            update(SeriesRow)
            .where(SeriesRow.id.in_(pks[i : i + IN_CHUNK]))
            .values(family_id=fam.id, family_origin=origin),
            execution_options={"synchronize_session": False},
        )
    session.expire_all()
    return len(rows)


def record_detection(
    session: Session,
    series_id: str,
    *,
    interval_seconds: float | None,
    detected_period: int | None,
    period_strength: float | None,
    family: str | None,
) -> None:
    """Store a series' detected interval and period, and its detected family unless the user
    assigned one explicitly (``family=None`` leaves the family as it is)."""
    row = series_row(session, series_id)
    row.interval_seconds = interval_seconds
    row.detected_period = detected_period
    row.period_strength = period_strength
    if family is not None and row.family_origin != "assigned":
        row.family_id = family_row(session, family).id
        row.family_origin = "detected"
    session.flush()


def delete_series(session: Session, series_id: str) -> int:
    """Remove a series with its points and adapted-model records; returns points removed."""
    row = series_row(session, series_id)
    removed = int(session.scalar(select(func.count()).where(PointRow.series_pk == row.id)) or 0)
    session.execute(delete(PointRow).where(PointRow.series_pk == row.id))
    session.delete(row)
    session.flush()
    return removed
