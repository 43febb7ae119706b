"""Store validated series in the registry database: idempotent merge or append, bulk writes.

``merge`` (default): the incoming series holds the series from its first point. The
overlapping prefix must equal what is stored (values bit for bit, timestamps too); only the
points beyond the stored ones are inserted, so re-ingesting a file changes nothing and a longer
file appends. A changed historical value is an :class:`~mamlctl.errors.IngestError`.

``append``: the incoming points continue the stored series (e.g. an M4 test file after its train
file); positions continue from the stored length, timestamps must be later than the last one.

Nothing is committed here: the caller's transaction covers a whole command, so any error leaves
the database exactly as it was. Points go in with COPY on PostgreSQL and a raw ``executemany``
on SQLite (both far faster than ORM objects).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from mamlctl.domain import Series, validate_series_id
from mamlctl.errors import IngestError
from mamlctl.registry.series_queries import IN_CHUNK, raw_point_values
from mamlctl.registry.tables import PointRow, SeriesRow, utcnow

IngestMode = Literal["merge", "append"]


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingSeries:
    """A validated series and where it came from (file path, for messages and lineage)."""

    series: Series
    source: str
    interval_seconds: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesIngestResult:
    series_id: str
    source: str
    status: Literal["new", "appended", "unchanged"]
    points_added: int
    n_points: int


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestSummary:
    results: tuple[SeriesIngestResult, ...]

    @property
    def points_added(self) -> int:
        return sum(r.points_added for r in self.results)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)


def _fail(item: IncomingSeries, problem: str) -> IngestError:
    return IngestError(f"{item.source}: series {item.series.series_id}: {problem}")


def _as_datetimes(ts: npt.NDArray[np.datetime64]) -> list[datetime]:
    return [datetime.fromisoformat(s) for s in np.datetime_as_string(ts, unit="us")]


@dataclass(slots=True)
class _Stored:
    values: npt.NDArray[np.float64]
    ts: list[datetime | None]


def _split_by_pk(pk_col: npt.NDArray[np.int64], pks: Sequence[int]) -> dict[int, tuple[int, int]]:
    """Row ranges of each series in a result ordered by (series_pk, position)."""
    out = dict.fromkeys(pks, (0, 0))
    if pk_col.size:
        starts = np.concatenate(([0], np.flatnonzero(np.diff(pk_col)) + 1))
        stops = np.concatenate((starts[1:], [pk_col.size]))
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            out[int(pk_col[a])] = (a, b)
    return out


def _load_stored(session: Session, rows: Sequence[SeriesRow]) -> dict[int, _Stored]:
    """Stored values (and timestamps, for series that have them) of the given series.

    Core execution on the session's connection with one ``fetchall`` per chunk: the ORM result
    layer and row-at-a-time iteration cost ~10 us a point here.
    """
    conn = session.connection()
    out: dict[int, _Stored] = {}
    for i in range(0, len(rows), IN_CHUNK):
        chunk = rows[i : i + IN_CHUNK]
        pks = [r.id for r in chunk]
        table = raw_point_values(conn, pks)
        pk_col = table[:, 0].astype(np.int64)
        val_col = np.ascontiguousarray(table[:, 1])
        ranges = _split_by_pk(pk_col, pks)
        for pk in pks:
            a, b = ranges[pk]
            out[pk] = _Stored(val_col[a:b], [])
        ts_pks = [r.id for r in chunk if r.first_ts is not None]
        if ts_pks:
            res_ts = conn.execute(
                select(PointRow.series_pk, PointRow.ts)
                .where(PointRow.series_pk.in_(ts_pks))
                .order_by(PointRow.series_pk, PointRow.position)
            ).all()
            for pk, ts in res_ts:
                out[pk].ts.append(ts)
    return out


def _check_prefix(item: IncomingSeries, stored: _Stored) -> None:
    s = item.series
    n = min(len(stored.values), len(s))
    old = stored.values[:n]
    new = s.values[:n]
    diff = np.flatnonzero(old != new)
    if diff.size:
        p = int(diff[0])
        raise _fail(
            item,
            f"value at position {p} is {float(new[p])!r} but the registry holds {float(old[p])!r}; "
            "historical points cannot change (ingest it under another series id)",
        )
    stored_has_ts = bool(stored.ts) and stored.ts[0] is not None
    if stored_has_ts != (s.timestamps is not None):
        raise _fail(
            item,
            "timestamps present in one of the file and the registry but not the other",
        )
    if stored_has_ts and s.timestamps is not None and n:
        old_ts = np.array(stored.ts[:n], dtype="datetime64[us]")
        new_ts = s.timestamps[:n].astype("datetime64[us]")
        bad = np.flatnonzero(old_ts != new_ts)
        if bad.size:
            p = int(bad[0])
            raise _fail(
                item,
                f"timestamp at position {p} is {new_ts[p]} but the registry holds {old_ts[p]}; "
                "historical points cannot change",
            )


def store_series(
    session: Session,
    batch: Sequence[IncomingSeries],
    *,
    mode: IngestMode = "merge",
    on_progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Store every series of ``batch`` (validated already), in the caller's transaction.

    All checks run before the first write, so an :class:`IngestError` leaves nothing behind even
    if the caller forgot to roll back.
    """
    seen: dict[str, str] = {}
    for item in batch:
        sid = validate_series_id(item.series.series_id)
        if sid in seen:
            raise _fail(item, f"appears twice in this ingest (also in {seen[sid]})")
        seen[sid] = item.source
        if not np.all(np.isfinite(item.series.values)):
            raise _fail(item, "non-finite values reached the registry (validate first)")

    ids = [item.series.series_id for item in batch]
    rows: dict[str, SeriesRow] = {}
    for i in range(0, len(ids), IN_CHUNK):
        for row in session.scalars(
            select(SeriesRow).where(SeriesRow.series_id.in_(ids[i : i + IN_CHUNK]))
        ):
            rows[row.series_id] = row
    stored = (
        _load_stored(session, [r for r in rows.values() if r.n_points]) if mode == "merge" else {}
    )

    # Phase 1: decide every series' new points (checks only, no writes).
    plan: list[tuple[IncomingSeries, SeriesRow | None, int]] = []  # (item, row, first new pos)
    for item in batch:
        s = item.series
        row = rows.get(s.series_id)
        n_old = row.n_points if row is not None else 0
        if row is not None and n_old:
            stored_has_ts = row.first_ts is not None
            if mode == "merge":
                _check_prefix(item, stored[row.id])
                start = n_old
            else:
                if stored_has_ts != (s.timestamps is not None):
                    raise _fail(item, "timestamps present in one of the file and the registry only")
                if stored_has_ts and s.timestamps is not None and len(s):
                    first_new = s.timestamps[0].astype("datetime64[us]")
                    if row.last_ts is not None and first_new <= np.datetime64(row.last_ts, "us"):
                        raise _fail(
                            item,
                            f"append starts at {first_new}, not after the stored last "
                            f"timestamp {row.last_ts}",
                        )
                start = 0
        else:
            start = 0
        plan.append((item, row, start))

    # Phase 2: create new series rows, then bulk-insert points.
    now = utcnow()
    new_rows: list[SeriesRow] = []
    for item, row, _ in plan:
        if row is None:
            row = SeriesRow(
                series_id=item.series.series_id,
                source=item.source,
                interval_seconds=item.interval_seconds,
                n_points=0,
                created_at=now,
                updated_at=now,
            )
            rows[item.series.series_id] = row
            new_rows.append(row)
    if new_rows:
        session.add_all(new_rows)
        session.flush()

    pk_parts: list[npt.NDArray[np.int64]] = []
    pos_parts: list[npt.NDArray[np.int64]] = []
    val_parts: list[npt.NDArray[np.float64]] = []
    ts_parts: list[npt.NDArray[np.datetime64] | None] = []
    results: list[SeriesIngestResult] = []
    for done, (item, _, start) in enumerate(plan, 1):
        s = item.series
        row = rows[s.series_id]
        is_new = row.n_points == 0
        n_old = row.n_points
        if mode == "merge":
            add_vals = s.values[start:]
            add_ts = None if s.timestamps is None else s.timestamps[start:]
        else:
            add_vals = s.values
            add_ts = s.timestamps
        k = int(add_vals.shape[0])
        if k:
            pk_parts.append(np.full(k, row.id, dtype=np.int64))
            pos_parts.append(np.arange(n_old, n_old + k, dtype=np.int64))
            val_parts.append(np.asarray(add_vals, dtype=np.float64))
            ts_parts.append(None if add_ts is None else add_ts.astype("datetime64[us]"))
            row.n_points = n_old + k
            if add_ts is not None:
                if row.first_ts is None:
                    row.first_ts = _as_datetimes(add_ts[:1])[0]
                row.last_ts = _as_datetimes(add_ts[-1:])[0]
            row.source = item.source
            row.updated_at = now
        if item.interval_seconds is not None and row.interval_seconds is None:
            row.interval_seconds = item.interval_seconds
        status: Literal["new", "appended", "unchanged"] = (
            "new" if is_new else ("appended" if k else "unchanged")
        )
        results.append(
            SeriesIngestResult(
                series_id=s.series_id,
                source=item.source,
                status=status,
                points_added=k,
                n_points=row.n_points,
            )
        )
        if on_progress is not None and done % 50 == 0:
            on_progress(50)
    if on_progress is not None and len(plan) % 50:
        on_progress(len(plan) % 50)
    session.flush()
    if pk_parts:
        insert_points(session, pk_parts, pos_parts, val_parts, ts_parts)
    return IngestSummary(results=tuple(results))


def _ts_strings(ts: npt.NDArray[np.datetime64] | None, n: int) -> list[str | None]:
    if ts is None:
        return [None] * n
    return [s.replace("T", " ") for s in np.datetime_as_string(ts, unit="us")]


def insert_points(
    session: Session,
    pk_parts: list[npt.NDArray[np.int64]],
    pos_parts: list[npt.NDArray[np.int64]],
    val_parts: list[npt.NDArray[np.float64]],
    ts_parts: list[npt.NDArray[np.datetime64] | None],
) -> None:
    conn = session.connection()
    dialect = conn.dialect.name
    pks = np.concatenate(pk_parts).tolist()
    positions = np.concatenate(pos_parts).tolist()
    values = np.concatenate(val_parts).tolist()
    ts: list[str | None] = []
    for t, v in zip(ts_parts, val_parts, strict=True):
        ts.extend(_ts_strings(t, int(v.shape[0])))
    raw: Any = conn.connection.driver_connection
    if dialect == "sqlite":
        # The text form SQLAlchemy's SQLite DateTime type stores and parses back.
        cur = raw.cursor()
        try:
            cur.executemany(
                "INSERT INTO points (series_pk, position, ts, value) VALUES (?, ?, ?, ?)",
                zip(pks, positions, ts, values, strict=True),
            )
        finally:
            cur.close()
    elif dialect == "postgresql" and hasattr(raw, "cursor") and "psycopg" in type(raw).__module__:
        null = "\\N"
        lines = "".join(
            f"{p}\t{q}\t{null if t is None else t}\t{v!r}\n"
            for p, q, t, v in zip(pks, positions, ts, values, strict=True)
        )
        with (
            raw.cursor() as cur,
            cur.copy("COPY points (series_pk, position, ts, value) FROM STDIN") as copy,
        ):
            copy.write(lines)
    else:  # any other backend: executemany through Core
        conn.execute(
            insert(PointRow),
            [
                {
                    "series_pk": p,
                    "position": q,
                    "ts": None if t is None else datetime.fromisoformat(t),
                    "value": v,
                }
                for p, q, t, v in zip(pks, positions, ts, values, strict=True)
            ],
        )
