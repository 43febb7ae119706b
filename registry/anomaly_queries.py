"""Anomaly records (table ``anomalies``): list, show, acknowledge. The caller owns the session;
nothing here commits. Rows leave as :class:`~mamlctl.domain.AnomalyRecord`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from mamlctl.domain import ANOMALY_STATUSES, AnomalyRecord, AnomalyStatus
from mamlctl.errors import InputError, NotFoundError
from mamlctl.registry.family_queries import family_row
from mamlctl.registry.series_queries import series_row
from mamlctl.registry.tables import AnomalyRow, FamilyRow, SeriesRow, utcnow

#: Most records one listing returns unless asked for fewer.
DEFAULT_LIMIT = 1000


def _aware(dt: datetime | None) -> datetime | None:
    return None if dt is None else dt.replace(tzinfo=UTC)


def _record(row: AnomalyRow, series_id: str, family: str | None) -> AnomalyRecord:
    return AnomalyRecord(
        id=row.id,
        series_id=series_id,
        family=family,
        timestamp=row.ts if row.ts is not None else row.position,
        position=row.position,
        value=row.value,
        forecast=row.forecast,
        sigma=row.sigma,
        z=row.z,
        anomaly_score=row.score,
        magnitude=row.magnitude,
        registered_model=row.registered_model,
        initializer_version=row.initializer_version,
        model_sha256=row.model_sha256,
        status=cast(AnomalyStatus, row.status),
        created_at=cast(datetime, _aware(row.created_at)),
        acknowledged_at=_aware(row.acknowledged_at),
    )


def _select() -> Select[Any]:
    return (
        select(AnomalyRow, SeriesRow.series_id, FamilyRow.name)
        .join(SeriesRow, AnomalyRow.series_pk == SeriesRow.id)
        .outerjoin(FamilyRow, SeriesRow.family_id == FamilyRow.id)
    )


def check_status(status: str | None) -> AnomalyStatus | None:
    if status is not None and status not in ANOMALY_STATUSES:
        raise InputError(f"status must be one of {', '.join(ANOMALY_STATUSES)}, got {status!r}")
    return cast(AnomalyStatus | None, status)


def list_anomalies(
    session: Session,
    *,
    since: datetime | None = None,
    family: str | None = None,
    status: str | None = None,
    series_id: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[AnomalyRecord]:
    """Records flagged at or after ``since`` (``created_at``, UTC), oldest first; filters
    must name an existing family/series (:class:`NotFoundError` otherwise)."""
    if limit < 1:
        raise InputError(f"limit must be >= 1, got {limit}")
    stmt = _select().order_by(AnomalyRow.created_at, AnomalyRow.id).limit(limit)
    if since is not None:
        naive = since.astimezone(UTC).replace(tzinfo=None) if since.tzinfo else since
        stmt = stmt.where(AnomalyRow.created_at >= naive)
    if family is not None:
        stmt = stmt.where(SeriesRow.family_id == family_row(session, family).id)
    if (st := check_status(status)) is not None:
        stmt = stmt.where(AnomalyRow.status == st)
    if series_id is not None:
        stmt = stmt.where(AnomalyRow.series_pk == series_row(session, series_id).id)
    return [_record(row, sid, fam) for row, sid, fam in session.execute(stmt).all()]


def get_anomaly(session: Session, anomaly_id: int) -> AnomalyRecord:
    found = session.execute(_select().where(AnomalyRow.id == anomaly_id)).one_or_none()
    if found is None:
        raise NotFoundError(f"no anomaly record {anomaly_id} (see `mamlctl anomalies list`)")
    return _record(*found)


def acknowledge(session: Session, ids: Sequence[int]) -> list[AnomalyRecord]:
    """Mark records acknowledged (already acknowledged ones keep their first time); every id
    must exist (:class:`NotFoundError` naming the first missing one, nothing changed)."""
    wanted = sorted(set(ids))
    found = set(session.scalars(select(AnomalyRow.id).where(AnomalyRow.id.in_(wanted))))
    missing = [i for i in wanted if i not in found]
    if missing:
        raise NotFoundError(f"no anomaly record {missing[0]} (see `mamlctl anomalies list`)")
    session.execute(
        update(AnomalyRow)
        .where(AnomalyRow.id.in_(wanted), AnomalyRow.status == "open")
        .values(status="acknowledged", acknowledged_at=utcnow())
    )
    return [get_anomaly(session, i) for i in wanted]
