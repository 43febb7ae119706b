"""The Alembic migration builds exactly the ORM schema, on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mamlctl.errors import StoreError
from mamlctl.registry.db import (
    current_revision,
    ensure_schema,
    head_revision,
    make_engine,
    open_registry,
    upgrade_schema,
)
from mamlctl.registry.tables import Base
from mamlctl.settings import Settings


def test_migration_matches_orm_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert current_revision(engine) == head_revision()


def test_points_primary_key_is_series_then_position(engine: Engine) -> None:
    pk = inspect(engine).get_pk_constraint("points")
    assert pk["constrained_columns"] == ["series_pk", "position"]


def test_sqlite_points_table_is_without_rowid(tmp_settings: Settings, sqlite_url: str) -> None:
    eng = make_engine(sqlite_url)
    try:
        with eng.connect() as conn:
            sql = conn.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'points'")
            ).scalar_one()
            fk = conn.execute(text("PRAGMA foreign_keys")).scalar_one()
            journal = conn.execute(text("PRAGMA journal_mode")).scalar_one()
    finally:
        eng.dispose()
    assert "WITHOUT ROWID" in sql.upper()
    assert fk == 1
    assert journal.lower() == "wal"


def test_foreign_keys_are_enforced(session: Session) -> None:
    with pytest.raises(IntegrityError):
        session.execute(
            text(
                "INSERT INTO series (series_id, family_id, n_points, created_at, updated_at) "
                "VALUES ('x', 999, 0, '2024-01-01', '2024-01-01')"
            )
        )
        session.flush()


def test_embedded_database_is_created_on_first_use(tmp_settings: Settings) -> None:
    assert not tmp_settings.database_path.exists()
    with open_registry(tmp_settings) as factory, factory() as sess:
        tables = set(inspect(sess.get_bind()).get_table_names())
    assert {"families", "series", "points", "initializer_versions", "adapted_models"} <= tables
    assert current_revision(tmp_settings) == head_revision()


def test_server_database_is_not_migrated_implicitly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'server.db'}"
    eng = make_engine(url)
    try:
        with pytest.raises(StoreError, match="mamlctl db upgrade"):
            ensure_schema(eng, embedded=False)
        assert upgrade_schema(eng) == head_revision()
        ensure_schema(eng, embedded=False)  # at head: no error
    finally:
        eng.dispose()


def test_unreachable_database_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot reach"):
        current_revision("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")


def test_alembic_ini_reads_the_same_settings(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from alembic import command
    from alembic.config import Config

    from mamlctl.registry.db import MIGRATIONS_DIR

    url = f"sqlite:///{tmp_path / 'via_ini.db'}"
    monkeypatch.setenv("MAMLCTL_DATABASE_URL", url)
    cfg = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"))
    command.upgrade(cfg, "head")
    assert current_revision(url) == head_revision()
    command.downgrade(cfg, "base")
    eng = make_engine(url)
    try:
        assert set(inspect(eng).get_table_names()) == {"alembic_version"}
    finally:
        eng.dispose()
    command.upgrade(cfg, "head")
    assert current_revision(url) == head_revision()
