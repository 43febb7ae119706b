"""SQLAlchemy 2 ORM tables of the registry database.

::

    families ─< series ─< points                (series_pk, position) primary key
        │          │
        │          └─< adapted_models >─ initializer_versions >─ families
        └─< initializer_versions

* ``points`` is keyed by ``(series_pk, position)``: "the last N points of S" is a backward range
  scan of the primary key. On SQLite the table is ``WITHOUT ROWID`` so the rows are clustered on
  that key. ``position`` runs 0..n-1 in time order; ``ts`` is NULL for series without timestamps
  (M4).
* ``adapted_models`` keeps history; at most one row per series has ``is_current`` true, enforced
  by a partial unique index that SQLite and PostgreSQL both support.
* All ``DateTime`` columns hold naive UTC. Query functions return aware UTC datetimes for record
  times (created/adapted) and naive ones for point timestamps.

The schema is created and changed only by Alembic (``registry/migrations``); these classes must
stay identical to the latest migration (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Constraint naming convention, so Alembic migrations are deterministic on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Naive UTC now, the storage convention of every DateTime column."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FamilyRow(Base):
    __tablename__ = "families"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    period: Mapped[int | None] = mapped_column(Integer)
    interval_seconds: Mapped[float | None] = mapped_column(Double)
    window: Mapped[int] = mapped_column(Integer)
    horizon: Mapped[int] = mapped_column(Integer)
    support: Mapped[int] = mapped_column(Integer)
    alias: Mapped[str] = mapped_column(String(64), default="champion")
    #: Version the family's alias pointed at when last promoted (mirrors MLflow; may be NULL).
    champion_version: Mapped[int | None] = mapped_column(Integer)
    #: The MLflow run of that version: a re-created registered model repeats version numbers.
    champion_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class SeriesRow(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series_id: Mapped[str] = mapped_column(String(255), unique=True)
    family_id: Mapped[int | None] = mapped_column(
        ForeignKey("families.id", ondelete="SET NULL"), index=True
    )
    #: "detected" or "assigned": detection never overrides an explicit assignment.
    family_origin: Mapped[str | None] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(Text)
    interval_seconds: Mapped[float | None] = mapped_column(Double)
    detected_period: Mapped[int | None] = mapped_column(Integer)
    #: ACF value at the detected period (strength of the cycle), for reports.
    period_strength: Mapped[float | None] = mapped_column(Double)
    n_points: Mapped[int] = mapped_column(Integer, default=0)
    first_ts: Mapped[datetime | None] = mapped_column(DateTime)
    last_ts: Mapped[datetime | None] = mapped_column(DateTime)
    #: The observe loop's ranking state (JSON, :func:`~mamlctl.timeseries.stream_detector.
    #: ranking_to_json`), written with the counters; NULL before the first observation.
    detector_state: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class PointRow(Base):
    """One value of a series.

    ``series_pk`` deliberately has no FOREIGN KEY constraint: PostgreSQL checks a foreign key
    once per inserted row (a lookup plus a row lock on the parent), which made COPY of M4
    Hourly's 353,500 points 8x slower (13.1 s against 1.7 s, measured on this project's
    machine). Points are written only by :func:`mamlctl.registry.ingest.store_series`, in
    the transaction that created or read their series row, and removed with their series by
    :func:`mamlctl.registry.series_queries.delete_series`.
    """

    __tablename__ = "points"
    __table_args__ = ({"sqlite_with_rowid": False},)

    series_pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[datetime | None] = mapped_column(DateTime)
    value: Mapped[float] = mapped_column(Double)


class InitializerVersionRow(Base):
    __tablename__ = "initializer_versions"
    # One row per MLflow run: a version number repeats when the registered model is deleted
    # and created again (versions restart at 1), a run id never does.
    __table_args__ = (
        UniqueConstraint("registered_model", "run_id", name="uq_initializer_versions_run"),
        Index("ix_initializer_versions_model_version", "registered_model", "version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    family_id: Mapped[int] = mapped_column(
        ForeignKey("families.id", ondelete="CASCADE"), index=True
    )
    registered_model: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str] = mapped_column(String(64))
    source_uri: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AdaptedModelRow(Base):
    __tablename__ = "adapted_models"
    __table_args__ = (
        # At most one current adapted model per series (partial unique index, both backends).
        Index(
            "uq_adapted_models_current",
            "series_pk",
            unique=True,
            sqlite_where=text("is_current"),
            postgresql_where=text("is_current"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    initializer_version_id: Mapped[int] = mapped_column(
        ForeignKey("initializer_versions.id", ondelete="RESTRICT"), index=True
    )
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    adapted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    support: Mapped[int] = mapped_column(Integer)
    window: Mapped[int] = mapped_column(Integer)
    horizon: Mapped[int] = mapped_column(Integer)
    residual_scale: Mapped[float] = mapped_column(Double)
    threshold: Mapped[float] = mapped_column(Double)
    #: Position of the last support point the model saw (NULL when unknown).
    support_end: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)


class AnomalyRow(Base):
    """One flagged observation of ``POST /v1/observe``, written in the transaction that stored
    its point (``series_pk``, ``position``: the point's key). ``replaced``: the served model's
    window held ``forecast`` in this point's place (the detector's short-run rule,
    :mod:`mamlctl.timeseries.stream_detector`), which a restarted server needs to rebuild it.
    ``status`` is ``open`` until acknowledged (``mamlctl anomalies ack``)."""

    __tablename__ = "anomalies"
    __table_args__ = (UniqueConstraint("series_pk", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    ts: Mapped[datetime | None] = mapped_column(DateTime)
    value: Mapped[float] = mapped_column(Double)
    forecast: Mapped[float] = mapped_column(Double)
    sigma: Mapped[float] = mapped_column(Double)
    z: Mapped[float] = mapped_column(Double)
    score: Mapped[float] = mapped_column(Double)
    magnitude: Mapped[float] = mapped_column(Double)
    replaced: Mapped[bool] = mapped_column(Boolean)
    registered_model: Mapped[str] = mapped_column(String(255))
    initializer_version: Mapped[int] = mapped_column(Integer)
    model_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime)
