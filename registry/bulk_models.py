"""Record many adapted models at once (the adapt job's write path).

:func:`mamlctl.registry.model_queries.record_adapted_model` costs about five statements a row
(measured 7.7 ms a row on SQLite under load: 222 s for 10,000 series); a job records a chunk of
series with a handful of statements instead, with the same semantics (a test compares them).

Recording is idempotent per job: every row of a job carries the job's start time
(``adapted_at``, microseconds), so a series whose current row already has this initializer
version and this ``adapted_at`` was recorded by the same job (a chunk retried after its worker
died once its transaction had committed, see :mod:`mamlctl.stages.adapt_ray`) and is skipped:
nothing is recorded twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mamlctl.domain import NewModel
from mamlctl.errors import InputError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


__all__ = ["NewModel", "record_models_bulk"]


def record_models_bulk(
    session: Session,
    *,
    registered_model: str,
    initializer_version: int,
    initializer_run_id: str,
    support: int,
    window: int,
    horizon: int,
    adapted_at: datetime,
    entries: Sequence[NewModel],
) -> int:
    """Record many adapted models in a few statements (the semantics of
    :func:`mamlctl.registry.model_queries.record_adapted_model`, which costs ~5 statements a
    row): lock the series rows (PostgreSQL; in id order), flip their current rows, insert the
    new current rows. An entry whose series' current row already has this initializer version
    and ``adapted_at`` (the same job's, see the module doc) is skipped. Returns the rows
    inserted. The caller's transaction commits; never commits itself."""
    from sqlalchemy import insert, select, update

    from mamlctl.errors import NotFoundError
    from mamlctl.registry.tables import AdaptedModelRow, InitializerVersionRow, SeriesRow

    for e in entries:
        if len(e.sha256) != 64 or any(c not in "0123456789abcdef" for c in e.sha256):
            raise InputError(f"sha256 must be 64 lowercase hex characters, got {e.sha256!r}")
    ids = [e.series_id for e in entries]
    if len(set(ids)) != len(ids):
        raise InputError("a series appears twice in one batch of adapted models")
    pks: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = session.execute(
            select(SeriesRow.id, SeriesRow.series_id)
            .where(SeriesRow.series_id.in_(chunk))
            .order_by(SeriesRow.id)
            .with_for_update()
        ).all()
        pks.update({sid: pk for pk, sid in rows})
    missing = [sid for sid in ids if sid not in pks]
    if missing:
        raise NotFoundError(f"unknown series {missing[0]!r} (see `mamlctl series list`)")
    init_id = session.scalar(
        select(InitializerVersionRow.id).where(
            InitializerVersionRow.registered_model == registered_model,
            InitializerVersionRow.run_id == initializer_run_id,
        )
    )
    if init_id is None:
        raise NotFoundError(
            f"{registered_model} version {initializer_version} (run {initializer_run_id}) is "
            "not recorded in the registry"
        )
    when = adapted_at.astimezone(UTC).replace(tzinfo=None)
    done: set[int] = set()  # series whose current row is this job's already
    for start in range(0, len(ids), 500):
        chunk_pks = [pks[sid] for sid in ids[start : start + 500]]
        done.update(
            session.scalars(
                select(AdaptedModelRow.series_pk).where(
                    AdaptedModelRow.series_pk.in_(chunk_pks),
                    AdaptedModelRow.is_current.is_(True),
                    AdaptedModelRow.initializer_version_id == init_id,
                    AdaptedModelRow.adapted_at == when,
                )
            )
        )
    entries = [e for e in entries if pks[e.series_id] not in done]
    if not entries:
        return 0
    all_pks = [pks[e.series_id] for e in entries]
    for start in range(0, len(all_pks), 500):
        session.execute(
            update(AdaptedModelRow)
            .where(
                AdaptedModelRow.series_pk.in_(all_pks[start : start + 500]),
                AdaptedModelRow.is_current.is_(True),
            )
            .values(is_current=False)
        )
    session.execute(
        insert(AdaptedModelRow),
        [
            {
                "series_pk": pks[e.series_id],
                "initializer_version_id": init_id,
                "path": e.path,
                "sha256": e.sha256,
                "adapted_at": when,
                "support": support,
                "window": window,
                "horizon": horizon,
                "residual_scale": float(e.residual_scale),
                "threshold": float(e.threshold),
                "support_end": e.support_end,
                "meta": dict(e.metadata),
                "is_current": True,
            }
            for e in entries
        ],
    )
    return len(entries)
