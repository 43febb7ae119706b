"""Family queries. Every function takes the caller's session and never commits."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mamlctl.domain import Family, validate_family_name
from mamlctl.errors import InputError, NotFoundError
from mamlctl.registry.tables import FamilyRow


def family_from_row(row: FamilyRow) -> Family:
    return Family(
        name=row.name,
        period=row.period,
        interval_seconds=row.interval_seconds,
        window=row.window,
        horizon=row.horizon,
        support=row.support,
        alias=row.alias,
        champion_version=row.champion_version,
        champion_run_id=row.champion_run_id,
    )


def family_row(session: Session, name: str) -> FamilyRow:
    """The ORM row of a family; :class:`NotFoundError` naming the known families otherwise."""
    row = session.scalars(select(FamilyRow).where(FamilyRow.name == name)).one_or_none()
    if row is None:
        known = session.scalars(select(FamilyRow.name).order_by(FamilyRow.name).limit(20)).all()
        hint = f"known: {', '.join(known)}" if known else "none yet: run `mamlctl families detect`"
        raise NotFoundError(f"unknown family {name!r} ({hint})")
    return row


def get_family(session: Session, name: str) -> Family:
    """The family called ``name``; raises :class:`NotFoundError` when there is none."""
    return family_from_row(family_row(session, name))


def find_family(session: Session, name: str) -> Family | None:
    row = session.scalars(select(FamilyRow).where(FamilyRow.name == name)).one_or_none()
    return None if row is None else family_from_row(row)


def list_families(session: Session) -> list[Family]:
    rows = session.scalars(select(FamilyRow).order_by(FamilyRow.name)).all()
    return [family_from_row(r) for r in rows]


def validate_family(family: Family) -> None:
    """Reject a family whose period, window, horizon or support cannot work."""
    validate_family_name(family.name)
    if family.period is not None and family.period < 2:
        raise InputError(f"family {family.name}: period must be >= 2 or none, got {family.period}")
    if family.window < 1 or family.horizon < 1:
        raise InputError(
            f"family {family.name}: window and horizon must be >= 1, "
            f"got window={family.window} horizon={family.horizon}"
        )
    if family.support < family.window + 1:
        raise InputError(
            f"family {family.name}: support K={family.support} counts the window, so it must "
            f"be >= window + 1 = {family.window + 1}"
        )
    if family.interval_seconds is not None and not family.interval_seconds > 0:
        raise InputError(f"family {family.name}: interval must be positive")


def upsert_family(session: Session, family: Family, *, overwrite: bool = True) -> Family:
    """Insert ``family``, or update the existing one of that name.

    ``overwrite=False`` keeps an existing family unchanged (user-tuned L/H/K survive a
    re-detection) and returns it as stored. The champion is never changed here.
    """
    validate_family(family)
    row = session.scalars(select(FamilyRow).where(FamilyRow.name == family.name)).one_or_none()
    if row is None:
        row = FamilyRow(
            name=family.name,
            champion_version=family.champion_version,
            champion_run_id=family.champion_run_id,
        )
        session.add(row)
    elif not overwrite:
        return family_from_row(row)
    row.period = family.period
    row.interval_seconds = family.interval_seconds
    row.window = family.window
    row.horizon = family.horizon
    row.support = family.support
    row.alias = family.alias
    session.flush()
    return family_from_row(row)


def set_family_champion(
    session: Session, name: str, version: int | None, *, run_id: str | None = None
) -> Family:
    """Mirror the MLflow alias promotion of ``name`` (the version now serving, and its run) in
    the database."""
    row = family_row(session, name)
    row.champion_version = version
    row.champion_run_id = run_id if version is not None else None
    session.flush()
    return family_from_row(row)
