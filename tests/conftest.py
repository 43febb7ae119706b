"""Shared fixtures for every test area (owned by the foundation; reuse, do not copy).

Hermetic by default: every test runs with ``MAMLCTL_HOME`` under its own ``tmp_path`` and no
other ``MAMLCTL_*`` / ``MLFLOW_TRACKING_URI`` variable from the outer environment, so neither
the library nor a ``CliRunner`` invocation can touch ``~/.mamlctl``.

Database fixtures:

* ``tmp_settings``: Settings with home under tmp_path (embedded SQLite, not yet created).
* ``sqlite_url``: a migrated SQLite registry at the embedded default path of ``tmp_settings``
  (a copy of one file migrated once per session).
* ``postgres_url``: a PostgreSQL database created once per test session (unique name, dropped
  at the end), migrated, and emptied before each test. Skips only when no server answers on
  127.0.0.1:5432.
* ``db_url``: parametrised over ``sqlite`` and ``postgres``; ``db_settings`` are Settings (and
  environment, for the CLI) pointing at it; ``engine``, ``session_factory``, ``session`` sit on
  it. ``sqlite_session`` is the SQLite-only session for tests that need no backend matrix.
* ``mlflow_db_template``: an embedded MLflow SQLite file migrated once per session, for tests
  to copy into their home.
* ``seeded_registry``: ``db_settings`` plus a committed family ``sines`` of six seeded sine
  series (period 24, 240 points) for training/adaptation/serving tests.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from mamlctl.domain import Family, FloatArray, Series
from mamlctl.settings import Settings

PG_HOST = os.environ.get("MAMLCTL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MAMLCTL_TEST_PG_PORT", "5432"))
PG_ADMIN_DB = "test"
PG_USERS = ("postgres", "root")
REGISTRY_TABLES = (
    "anomalies",
    "adapted_models",
    "initializer_versions",
    "points",
    "series",
    "families",
)


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("MAMLCTL_") and not key.startswith("MAMLCTL_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MAMLCTL_HOME", str(tmp_path / "home"))


@pytest.fixture
def tmp_settings(tmp_path: Path) -> Settings:
    """Settings with every embedded default under ``tmp_path/home`` (nothing created yet)."""
    return Settings(home=tmp_path / "home")


# --- SQLite ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite registry migrated to head per test session; tests get copies."""
    from mamlctl.registry.db import make_engine, upgrade_schema

    path = tmp_path_factory.mktemp("registry-template") / "registry.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        upgrade_schema(engine)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    return path


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded MLflow SQLite file with MLflow's schema, migrated once per session (the
    migrations take many seconds on a loaded machine); tests copy it into their home."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}")
    client.search_experiments()
    client.search_registered_models()
    return path


@pytest.fixture
def sqlite_url(tmp_settings: Settings, sqlite_template: Path) -> str:
    """A migrated SQLite registry at ``tmp_settings``' embedded database path."""
    tmp_settings.ensure_home()
    shutil.copyfile(sqlite_template, tmp_settings.database_path)
    return f"sqlite:///{tmp_settings.database_path}"


# --- PostgreSQL -----------------------------------------------------------------------------


def _pg_admin() -> tuple[str, object] | None:
    import psycopg

    for user in PG_USERS:
        try:
            conn = psycopg.connect(
                host=PG_HOST,
                port=PG_PORT,
                user=user,
                dbname=PG_ADMIN_DB,
                autocommit=True,
                connect_timeout=3,
            )
        except psycopg.OperationalError:
            continue
        return user, conn
    return None


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session (dropped afterwards)."""
    admin = _pg_admin()
    if admin is None:
        pytest.skip(f"no PostgreSQL server answers on {PG_HOST}:{PG_PORT}")
    user, conn = admin
    name = f"mamlctl_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    url = f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    try:
        from mamlctl.registry.db import upgrade_schema

        upgrade_schema(url)
        yield url
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[attr-defined]
        conn.close()  # type: ignore[attr-defined]


@pytest.fixture
def postgres_url(pg_server_url: str) -> str:
    """The session's PostgreSQL registry, emptied (identities restarted) before this test."""
    from mamlctl.registry.db import make_engine

    engine = make_engine(pg_server_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(REGISTRY_TABLES)} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()
    return pg_server_url


# --- backend matrix -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty registry database URL, once per backend."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def db_settings(db_url: str, tmp_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings (and environment, so CLI commands agree) on the ``db_url`` database."""
    if db_url.startswith("sqlite"):
        return tmp_settings  # the embedded default path holds the migrated copy
    monkeypatch.setenv("MAMLCTL_DATABASE_URL", db_url)
    return Settings(home=tmp_settings.home, database_url=db_url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    from mamlctl.registry.db import make_engine

    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session on a migrated, empty database (both backends). Uncommitted work is rolled
    back at the end; tests may commit."""
    with session_factory() as sess:
        yield sess
        sess.rollback()


@pytest.fixture
def sqlite_session(sqlite_url: str) -> Iterator[Session]:
    """A session on a migrated, empty SQLite registry (no backend matrix)."""
    from mamlctl.registry.db import make_engine

    eng = make_engine(sqlite_url)
    try:
        with Session(eng, expire_on_commit=False) as sess:
            yield sess
            sess.rollback()
    finally:
        eng.dispose()


# --- seeded data ----------------------------------------------------------------------------


def sine_values(
    n: int,
    *,
    period: int = 24,
    amplitude: float = 1.0,
    phase: float = 0.0,
    level: float = 10.0,
    noise: float = 0.05,
    seed: int = 0,
) -> FloatArray:
    """A seeded sine of integer period plus Gaussian noise (the detectors' oracle)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    return (
        level + amplitude * np.sin(2 * np.pi * t / period + phase) + noise * rng.standard_normal(n)
    )


@dataclass(frozen=True)
class SeededRegistry:
    settings: Settings
    family: Family
    values: dict[str, FloatArray]


@pytest.fixture
def seeded_registry(db_settings: Settings) -> SeededRegistry:
    """Family ``sines`` (P=24, L=24, H=6, K=60) with six committed sine series s0..s5 of 240
    points (integer positions), on the ``db_url`` backend."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.ingest import IncomingSeries, store_series

    family = Family(
        name="sines", period=24, interval_seconds=3600.0, window=24, horizon=6, support=60
    )
    values = {
        f"s{i}": sine_values(240, amplitude=1.0 + 0.2 * i, phase=0.5 * i, level=5.0 + i, seed=i)
        for i in range(6)
    }
    with open_registry(db_settings) as factory, factory.begin() as sess:
        q.upsert_family(sess, family)
        store_series(
            sess,
            [
                IncomingSeries(
                    series=Series(series_id=k, values=v), source="seed", interval_seconds=3600.0
                )
                for k, v in values.items()
            ],
        )
        q.assign_family(sess, "sines", list(values))
    return SeededRegistry(settings=db_settings, family=family, values=values)
