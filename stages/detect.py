"""The family stage: detect each stored series' period and put it into its named family.

Families are created with their documented defaults when new and left as they are when they
exist (a user's L/H/K survive re-detection). A series the user assigned explicitly keeps its
family unless ``reassign`` is set; its detected period is still recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mamlctl.registry.family_queries import family_row, upsert_family
from mamlctl.registry.series_queries import load_many_series
from mamlctl.registry.tables import SeriesRow
from mamlctl.timeseries.families import Detection, detect_family
from mamlctl.timeseries.periodicity import infer_interval

CHUNK = 200


def detect_families(
    session: Session,
    *,
    series_ids: Sequence[str] | None = None,
    reassign: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> list[Detection]:
    """Detect and store period and family for ``series_ids`` (default: every series)."""
    rows = session.execute(
        select(
            SeriesRow.id, SeriesRow.series_id, SeriesRow.interval_seconds, SeriesRow.family_origin
        ).order_by(SeriesRow.id)
    ).all()
    meta = {sid: (pk, iv, origin) for pk, sid, iv, origin in rows}
    if series_ids is None:
        ids = [r[1] for r in rows]
    else:
        ids = list(series_ids)
        load_many_series(session, ids[:1])  # unknown id -> NotFoundError before any work
    family_ids: dict[str, int] = {}
    updates: list[dict[str, Any]] = []
    out: list[Detection] = []
    for i in range(0, len(ids), CHUNK):
        for s in load_many_series(session, ids[i : i + CHUNK]):
            pk, iv, origin = meta[s.series_id]
            if iv is None:
                iv = infer_interval(s.timestamps)
            det = detect_family(s.series_id, s.values, interval_seconds=iv)
            change: dict[str, Any] = {
                "id": pk,
                "interval_seconds": iv,
                "detected_period": det.estimate.period,
                "period_strength": det.estimate.strength if det.estimate.period else None,
            }
            if det.family is not None and (reassign or origin != "assigned"):
                name = det.family.name
                if name not in family_ids:
                    upsert_family(session, det.family, overwrite=False)
                    family_ids[name] = family_row(session, name).id
                change["family_id"] = family_ids[name]
                change["family_origin"] = "detected"
            updates.append(change)
            out.append(det)
        if on_progress is not None:
            on_progress(min(CHUNK, len(ids) - i))
    # Bulk UPDATE by primary key (one executemany per distinct key set).
    for keys in {tuple(sorted(u)) for u in updates}:
        batch = [u for u in updates if tuple(sorted(u)) == keys]
        session.execute(update(SeriesRow), batch)
    session.expire_all()
    return out
