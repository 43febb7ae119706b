"""Fixtures of the end-to-end tests: a home whose embedded MLflow database is a copy of the root
conftest's ``mlflow_db_template``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


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
