"""What the registry holds, per family: series, points, trained, adapted, stale."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mamlctl.registry.tables import AdaptedModelRow, FamilyRow, InitializerVersionRow, SeriesRow


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilyStatus:
    """One line of ``mamlctl status``. ``family`` None is the row of unassigned series.

    ``serving_version`` is the champion version mirrored in the database, else the newest
    recorded version. An adapted model is *stale* when it was adapted from another initializer
    than the serving one (by MLflow run when the champion's run is mirrored, else by version
    number), or from another family's initializer.
    """

    family: str | None
    period: int | None
    series: int
    points: int
    initializer_versions: int
    latest_version: int | None
    serving_version: int | None
    adapted: int
    stale: int
    #: The MLflow run of the serving version when the champion's run is mirrored.
    serving_run_id: str | None = None


def registry_status(session: Session) -> list[FamilyStatus]:
    fams = {f.id: f for f in session.scalars(select(FamilyRow).order_by(FamilyRow.name))}
    per_family = {
        fid: (int(n), int(p or 0))
        for fid, n, p in session.execute(
            select(SeriesRow.family_id, func.count(), func.sum(SeriesRow.n_points)).group_by(
                SeriesRow.family_id
            )
        )
    }
    inits = {
        fid: (int(n), int(v))
        for fid, n, v in session.execute(
            select(
                InitializerVersionRow.family_id,
                func.count(),
                func.max(InitializerVersionRow.version),
            ).group_by(InitializerVersionRow.family_id)
        )
    }
    adapted: dict[int | None, int] = {}
    stale: dict[int | None, int] = {}
    rows = session.execute(
        select(
            SeriesRow.family_id,
            InitializerVersionRow.family_id,
            InitializerVersionRow.version,
            InitializerVersionRow.run_id,
        )
        .join(AdaptedModelRow, AdaptedModelRow.series_pk == SeriesRow.id)
        .join(
            InitializerVersionRow,
            AdaptedModelRow.initializer_version_id == InitializerVersionRow.id,
        )
        .where(AdaptedModelRow.is_current)
    ).all()
    for series_fid, init_fid, version, run_id in rows:
        adapted[series_fid] = adapted.get(series_fid, 0) + 1
        fam = fams.get(series_fid) if series_fid is not None else None
        serving = None
        if fam is not None and fam.champion_run_id is not None:
            # by run: a re-created registered model's v1 is not the old v1
            current = run_id == fam.champion_run_id
        else:
            if fam is not None:
                serving = fam.champion_version or inits.get(fam.id, (0, None))[1]
            current = version == serving
        if series_fid != init_fid or not current:
            stale[series_fid] = stale.get(series_fid, 0) + 1
    out: list[FamilyStatus] = []
    for fid, fam in fams.items():
        n_series, n_points = per_family.get(fid, (0, 0))
        n_init, latest = inits.get(fid, (0, None))
        out.append(
            FamilyStatus(
                family=fam.name,
                period=fam.period,
                series=n_series,
                points=n_points,
                initializer_versions=n_init,
                latest_version=latest,
                serving_version=fam.champion_version or latest,
                serving_run_id=fam.champion_run_id if fam.champion_version else None,
                adapted=adapted.get(fid, 0),
                stale=stale.get(fid, 0),
            )
        )
    if None in per_family:
        n_series, n_points = per_family[None]
        out.append(
            FamilyStatus(
                family=None,
                period=None,
                series=n_series,
                points=n_points,
                initializer_versions=0,
                latest_version=None,
                serving_version=None,
                adapted=adapted.get(None, 0),
                stale=stale.get(None, 0),
            )
        )
    return out
