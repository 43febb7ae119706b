"""The point store on both backends: idempotent merge, append, exact round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sqlalchemy import select
from sqlalchemy.orm import Session

from mamlctl.domain import Series
from mamlctl.errors import IngestError
from mamlctl.registry import queries as q
from mamlctl.registry.ingest import IncomingSeries, store_series
from mamlctl.registry.tables import PointRow, SeriesRow


def _inc(
    sid: str, values: np.ndarray, ts: np.ndarray | None = None, src: str = "f.csv"
) -> IncomingSeries:
    return IncomingSeries(series=Series(series_id=sid, values=values, timestamps=ts), source=src)


def _dump(session: Session) -> list[tuple[object, ...]]:
    rows = session.execute(
        select(SeriesRow.series_id, PointRow.position, PointRow.ts, PointRow.value)
        .join(SeriesRow, PointRow.series_pk == SeriesRow.id)
        .order_by(SeriesRow.series_id, PointRow.position)
    ).all()
    return [tuple(r) for r in rows]


def _hourly(n: int) -> np.ndarray:
    return np.datetime64("2024-01-01T00:00", "us") + np.arange(n) * np.timedelta64(1, "h")


def test_merge_is_idempotent_and_appends_only_new_points(session: Session) -> None:
    a = np.random.default_rng(0).normal(size=100)
    first = store_series(session, [_inc("A", a[:60], _hourly(60))])
    assert [(r.status, r.points_added, r.n_points) for r in first.results] == [("new", 60, 60)]
    again = store_series(session, [_inc("A", a[:60], _hourly(60))])
    assert [(r.status, r.points_added) for r in again.results] == [("unchanged", 0)]
    longer = store_series(session, [_inc("A", a, _hourly(100))])
    assert [(r.status, r.points_added, r.n_points) for r in longer.results] == [
        ("appended", 40, 100)
    ]
    full = q.load_series(session, "A")
    np.testing.assert_array_equal(full.values, a)
    assert full.timestamps is not None
    np.testing.assert_array_equal(full.timestamps, _hourly(100))
    info = q.get_series(session, "A")
    assert (info.n_points, str(info.first_ts), str(info.last_ts)) == (
        100,
        "2024-01-01 00:00:00",
        "2024-01-05 03:00:00",
    )


def test_changed_historical_value_fails_before_any_write(session: Session) -> None:
    store_series(session, [_inc("A", np.arange(10.0)), _inc("B", np.arange(5.0))])
    before = _dump(session)
    changed = np.arange(12.0)
    changed[3] = 99.0
    with pytest.raises(
        IngestError,
        match=r"g.csv: series A: value at position 3 is 99.0 but the registry holds 3.0",
    ):
        store_series(
            session, [_inc("B", np.arange(8.0), src="g.csv"), _inc("A", changed, src="g.csv")]
        )
    assert _dump(session) == before


def test_duplicate_series_in_one_ingest_is_an_error(session: Session) -> None:
    with pytest.raises(
        IngestError, match=r"series A: appears twice in this ingest \(also in x.csv\)"
    ):
        store_series(
            session,
            [_inc("A", np.arange(3.0), src="x.csv"), _inc("A", np.arange(3.0), src="y.csv")],
        )
    assert _dump(session) == []


def test_append_mode_continues_positions(session: Session) -> None:
    store_series(session, [_inc("A", np.arange(5.0))])
    out = store_series(session, [_inc("A", np.array([10.0, 11.0]))], mode="append")
    assert [(r.status, r.points_added, r.n_points) for r in out.results] == [("appended", 2, 7)]
    values, positions = q.last_points(session, "A", 3)
    np.testing.assert_array_equal(values, [4.0, 10.0, 11.0])
    np.testing.assert_array_equal(positions, [4, 5, 6])


def test_append_mode_rejects_timestamps_not_after_the_last(session: Session) -> None:
    store_series(session, [_inc("A", np.arange(5.0), _hourly(5))])
    with pytest.raises(
        IngestError, match=r"append starts at 2024-01-01T04:00:00\.000000, not after"
    ):
        store_series(session, [_inc("A", np.array([1.0]), _hourly(5)[-1:])], mode="append")


def test_timestamps_missing_on_one_side_is_an_error(session: Session) -> None:
    store_series(session, [_inc("A", np.arange(5.0), _hourly(5))])
    with pytest.raises(IngestError, match="timestamps present in one of the file and the registry"):
        store_series(session, [_inc("A", np.arange(6.0))])


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=hnp.arrays(np.float64, st.integers(1, 300), elements=finite),
    steps=st.lists(st.integers(1, 10**12), min_size=300, max_size=300),
    with_ts=st.booleans(),
)
def test_round_trip_is_exact(
    session: Session, values: np.ndarray, steps: list[int], with_ts: bool
) -> None:
    n = values.shape[0]
    ts = None
    if with_ts:
        ts = np.datetime64("2000-01-01T00:00:00", "us") + np.cumsum(
            np.array(steps[:n], dtype=np.int64)
        ).astype("timedelta64[us]")
    try:
        store_series(session, [_inc("rt", values, ts)])
        back = q.load_series(session, "rt")
        # exact float64 equality (SQLite stores -0.0 as 0.0, equal under ==)
        np.testing.assert_array_equal(back.values, values)
        if ts is None:
            assert back.timestamps is None
        else:
            assert back.timestamps is not None
            np.testing.assert_array_equal(back.timestamps, ts)
        tail, pos = q.last_points(session, "rt", 7)
        np.testing.assert_array_equal(tail, values[-7:])
        np.testing.assert_array_equal(pos, np.arange(max(0, n - 7), n))
    finally:
        session.rollback()
