"""Shared, session-scoped ONNX templates: each costs one torch.onnx.export (~1-3 s)."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def template_cache() -> Any:
    import torch

    from mamlctl.maml.export import TemplateCache

    torch.set_num_threads(1)
    return TemplateCache()


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An embedded MLflow SQLite file with MLflow's schema, migrated once per session (the
    migrations take many seconds on a loaded machine); tests copy it into their home."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}")
    client.search_experiments()
    client.search_registered_models()
    return path
