"""Fixtures of the end-to-end tests: a migrated embedded MLflow database made once per session
(MLflow's migrations take many seconds on a loaded machine) and a home that uses it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}")
    client.search_experiments()
    client.search_registered_models()
    return path


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """End-to-end tests run on the embedded SQLite registry (the registry tests cover
    PostgreSQL); overrides the root conftest's backend matrix in this folder."""
    return sqlite_url


@pytest.fixture
def sines_home(seeded_registry: object, mlflow_db_template: Path) -> object:
    """``seeded_registry`` (family ``sines``, six series) with the embedded MLflow store."""
    settings = seeded_registry.settings  # type: ignore[attr-defined]
    settings.ensure_home()
    shutil.copyfile(mlflow_db_template, settings.mlflow_dir / "mlflow.db")
    return seeded_registry
