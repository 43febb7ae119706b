"""Fixtures for the MLflow store tests: an embedded SQLite store per test and one real
``mlflow server`` subprocess for the whole session (SQLite backend, loopback, free port)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_processes import free_port, start_mlflow_server

from mamlctl.registry.mlflow_store import MlflowStore, open_store
from mamlctl.settings import Settings


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a real ``mlflow server`` (started once, always terminated)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = start_mlflow_server(root, port, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mlflow_db_template: Path) -> Path:
    """No MLflow/mamlctl URIs leak in from the environment; MAMLCTL_HOME is a fresh folder
    whose embedded MLflow database is a copy of the migrated template."""
    for key in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "MAMLCTL_TRACKING_URI",
        "MAMLCTL_REGISTRY_URI",
        "MAMLCTL_DATABASE_URL",
        "MLFLOW_RUN_ID",
    ):
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    (home / "mlflow").mkdir(parents=True)
    shutil.copyfile(mlflow_db_template, home / "mlflow" / "mlflow.db")
    monkeypatch.setenv("MAMLCTL_HOME", str(home))
    return home


@pytest.fixture
def embedded_settings(clean_env: Path) -> Settings:
    return Settings(home=clean_env)


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.slow)])
def backend(
    request: pytest.FixtureRequest, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Run a test once against the embedded store and once against the real server."""
    if request.param == "server":
        uri: str = request.getfixturevalue("mlflow_server")
        monkeypatch.setenv("MAMLCTL_TRACKING_URI", uri)
    return str(request.param)


@pytest.fixture
def store(backend: str, clean_env: Path) -> MlflowStore:
    """A store on the parametrised backend; family names are unique per test (shared server)."""
    return open_store(Settings())


@pytest.fixture
def family(request: pytest.FixtureRequest) -> str:
    """A family name unique to this test (the session's server is shared between tests)."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")
    return f"t-{name}"[:100]


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """The training tests record versions in the embedded SQLite registry only (the registry
    tests cover PostgreSQL); overrides the root conftest's backend matrix in this folder."""
    return sqlite_url
