"""Query functions on both backends, checked against the values that went in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mamlctl.domain import Family, Series
from mamlctl.errors import InputError, NotFoundError
from mamlctl.registry import queries as q
from mamlctl.registry.ingest import IncomingSeries, store_series
from mamlctl.registry.tables import AdaptedModelRow

HOURLY = Family(
    name="hourly", period=24, interval_seconds=3600.0, window=48, horizon=48, support=119
)
SHA = "ab" * 32


def _store(session: Session, **series: np.ndarray) -> None:
    store_series(
        session,
        [
            IncomingSeries(series=Series(series_id=k, values=v), source="t.csv")
            for k, v in series.items()
        ],
    )


def test_family_upsert_get_list(session: Session) -> None:
    assert q.upsert_family(session, HOURLY) == HOURLY
    wider = Family(
        name="hourly", period=24, interval_seconds=3600.0, window=96, horizon=48, support=200
    )
    assert q.upsert_family(session, wider, overwrite=False) == HOURLY
    assert q.upsert_family(session, wider) == wider
    assert q.get_family(session, "hourly") == wider
    assert q.list_families(session) == [wider]
    with pytest.raises(NotFoundError, match=r"unknown family 'daily'.*known: hourly"):
        q.get_family(session, "daily")


def test_family_validation(session: Session) -> None:
    with pytest.raises(
        InputError, match="support K=10 counts the window, so it must be >= window \\+ 1 = 49"
    ):
        q.upsert_family(
            session,
            Family(name="x", period=24, interval_seconds=None, window=48, horizon=48, support=10),
        )


def test_last_points_and_values(session: Session) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=1000), rng.normal(size=7)
    _store(session, A=a, B=b)
    values, positions = q.last_points(session, "A", 512)
    np.testing.assert_array_equal(values, a[-512:])
    np.testing.assert_array_equal(positions, np.arange(488, 1000))
    values, positions = q.last_points(session, "B", 512)
    np.testing.assert_array_equal(values, b)
    np.testing.assert_array_equal(positions, np.arange(7))
    np.testing.assert_array_equal(q.series_values(session, "A", start=10, stop=20), a[10:20])
    np.testing.assert_array_equal(q.load_series(session, "A").values, a)
    with pytest.raises(NotFoundError, match="unknown series 'C'"):
        q.last_points(session, "C", 5)


def test_assign_and_family_listing(session: Session) -> None:
    q.upsert_family(session, HOURLY)
    _store(session, A=np.arange(200.0), B=np.arange(300.0), short=np.arange(47.0))
    assert q.assign_family(session, "hourly", ["B", "A"]) == 2
    assert q.series_ids_in_family(session, "hourly") == ["A", "B"]
    info = q.get_series(session, "A")
    assert (info.family, info.family_origin, info.n_points, info.first_ts, info.last_ts) == (
        "hourly",
        "assigned",
        200,
        0,
        199,
    )
    with pytest.raises(InputError, match="series short has 47 points, fewer than family hourly"):
        q.assign_family(session, "hourly", ["short"])
    with pytest.raises(NotFoundError, match="unknown family"):
        q.assign_family(session, "nope", ["A"])
    assert [s.series_id for s in q.list_series(session, unassigned=True)] == ["short"]
    fam = q.load_family_series(session, "hourly")
    assert [s.series_id for s in fam] == ["A", "B"]
    np.testing.assert_array_equal(fam[1].values, np.arange(300.0))


def test_detection_never_overrides_assignment(session: Session) -> None:
    q.upsert_family(session, HOURLY)
    q.upsert_family(
        session,
        Family(name="other", period=None, interval_seconds=None, window=8, horizon=2, support=20),
    )
    _store(session, A=np.arange(200.0))
    q.assign_family(session, "hourly", ["A"])
    q.record_detection(
        session,
        "A",
        interval_seconds=60.0,
        detected_period=None,
        period_strength=None,
        family="other",
    )
    info = q.get_series(session, "A")
    assert (info.family, info.interval_seconds) == ("hourly", 60.0)


def _adapt(session: Session, series_id: str, version: int, sha: str = SHA) -> None:
    q.record_adapted_model(
        session,
        series_id=series_id,
        registered_model="maml-hourly",
        initializer_version=version,
        path=f"models/{series_id}-v{version}.onnx",
        sha256=sha,
        support=119,
        window=48,
        horizon=48,
        residual_scale=0.5,
        threshold=3.0,
        metadata={"k": 1},
        support_end=199,
    )


def test_lineage_and_current_flip(session: Session) -> None:
    q.upsert_family(session, HOURLY)
    _store(session, A=np.arange(200.0), B=np.arange(200.0))
    q.assign_family(session, "hourly", ["A", "B"])
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ref = q.record_initializer_version(
        session, family="hourly", version=1, run_id="r1", metrics={"loss": 0.25}, created_at=when
    )
    assert (ref.registered_model, ref.version, ref.metrics, ref.created_at) == (
        "maml-hourly",
        1,
        {"loss": 0.25},
        when,
    )
    assert q.record_initializer_version(session, family="hourly", version=1, run_id="r1") == ref
    # the registered model deleted and created again in MLflow: v1 again, another run
    again = q.record_initializer_version(session, family="hourly", version=1, run_id="again")
    assert (again.version, again.run_id) == (1, "again")
    assert q.get_initializer_version(session, family="hourly", version=1).run_id == "again"
    q.upsert_family(session, replace(HOURLY, name="other"))
    with pytest.raises(InputError, match="recorded for another family"):
        q.record_initializer_version(
            session, family="other", version=1, run_id="r1", registered_model="maml-hourly"
        )
    q.record_initializer_version(session, family="hourly", version=2, run_id="r2")
    assert q.current_adapted_model(session, "A") is None
    _adapt(session, "A", 1)
    _adapt(session, "A", 2, sha="cd" * 32)
    _adapt(session, "B", 1)
    cur = q.current_adapted_model(session, "A")
    assert cur is not None
    assert (
        cur.initializer_version,
        cur.initializer_run_id,
        cur.sha256,
        cur.family,
        cur.metadata,
    ) == (
        2,
        "r2",
        "cd" * 32,
        "hourly",
        {"k": "1"},
    )
    history = q.adapted_model_history(session, "A")
    assert [(h.initializer_version, h.is_current) for h in history] == [(1, False), (2, True)]
    assert [
        (m.series_id, m.initializer_version) for m in q.current_adapted_models(session, "hourly")
    ] == [
        ("A", 2),
        ("B", 1),
    ]
    status = {s.family: s for s in q.registry_status(session)}["hourly"]
    assert (status.series, status.points, status.initializer_versions, status.serving_version) == (
        2,
        400,
        3,  # r1, "again" (v1 of the re-created model) and r2
        2,
    )
    assert (status.adapted, status.stale) == (2, 1)  # B still on version 1
    q.set_family_champion(session, "hourly", 1)
    status = {s.family: s for s in q.registry_status(session)}["hourly"]
    assert (status.serving_version, status.stale) == (1, 1)  # now A (v2) is the stale one
    assert q.get_initializer_version(session, family="hourly", version=1).aliases == ("champion",)


def test_partial_unique_index_forbids_two_current(session: Session) -> None:
    q.upsert_family(session, HOURLY)
    _store(session, A=np.arange(200.0))
    q.record_initializer_version(session, family="hourly", version=1, run_id="r1")
    _adapt(session, "A", 1)
    row = session.query(AdaptedModelRow).one()
    dup = AdaptedModelRow(
        series_pk=row.series_pk,
        initializer_version_id=row.initializer_version_id,
        path="x",
        sha256=SHA,
        support=1,
        window=1,
        horizon=1,
        residual_scale=1.0,
        threshold=1.0,
        is_current=True,
        meta={},
    )
    session.add(dup)
    with pytest.raises(IntegrityError):
        session.flush()


def test_bad_sha_and_unknown_version(session: Session) -> None:
    q.upsert_family(session, HOURLY)
    _store(session, A=np.arange(200.0))
    with pytest.raises(InputError, match="sha256"):
        _adapt(session, "A", 1, sha="xyz")
    with pytest.raises(NotFoundError, match="maml-hourly version 7 is not recorded"):
        _adapt(session, "A", 7)


def test_delete_series_removes_points_and_adapted_models(session: Session) -> None:
    q.upsert_family(session, HOURLY)
    _store(session, A=np.arange(200.0), B=np.arange(5.0))
    q.record_initializer_version(session, family="hourly", version=1, run_id="r1")
    _adapt(session, "A", 1)
    assert q.delete_series(session, "A") == 200
    assert q.count_points(session) == 5 and q.count_series(session) == 1
    assert session.query(AdaptedModelRow).count() == 0
    with pytest.raises(NotFoundError):
        q.get_series(session, "A")
