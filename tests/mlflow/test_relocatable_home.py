"""A copied home is self-contained: its embedded MLflow store follows it.

Regression: MLflow's SQLite store keeps absolute artifact locations, so a copy of a home read
its initializers from (and wrote its runs into) the original; with the original deleted,
``adapt`` failed. Oracle: the file system (the original is gone and stays gone; new artifacts
exist under the copy) and the initializer's parameters, identical after the move.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from initializer_fixtures import register_test_initializer
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.settings import Settings

runner = CliRunner()


def test_a_copied_home_works_after_the_original_is_deleted(
    seeded_registry: Any,
    tmp_path: Path,
    mlflow_db_template: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mamlctl.maml.initializer import load_initializer
    from mamlctl.registry.mlflow_models import models_uri
    from mamlctl.registry.mlflow_store import open_store

    original = seeded_registry.settings.home
    seeded_registry.settings.ensure_home()
    shutil.copyfile(mlflow_db_template, seeded_registry.settings.mlflow_dir / "mlflow.db")
    register_test_initializer(Settings(home=original), tmp_path)
    before = open_store(Settings(home=original)).load(models_uri("sines"), loader=load_initializer)
    first = runner.invoke(app, ["adapt", "--family", "sines", "--json"])
    assert first.exit_code == 0, first.output

    copy = tmp_path / "elsewhere" / "home"
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    monkeypatch.setenv("MAMLCTL_HOME", str(copy))
    settings = Settings(home=copy)

    store = open_store(settings)
    after = store.load(models_uri("sines"), loader=load_initializer)
    assert before.params.keys() == after.params.keys()
    for name, value in before.params.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(after.params[name]))

    result = runner.invoke(app, ["adapt", "--family", "sines", "--force", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["adapted"] == 6
    run = store.client.get_run(report["run_id"])
    root = settings.artifact_root.resolve()
    assert run.info.artifact_uri.startswith(root.as_uri() + "/")
    assert (root / "maml-sines" / report["run_id"] / "artifacts" / "parity.json").is_file()
    experiment = store.client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (root / "maml-sines").as_uri()
    assert not original.exists()  # nothing was written into the old place


def test_reroot_leaves_foreign_experiments_and_current_homes_alone(
    embedded_settings: Settings, tmp_path: Path
) -> None:
    """Only mamlctl's experiments move, and only when their root differs (idempotent)."""
    from mamlctl.registry.mlflow_home import reroot_embedded_store
    from mamlctl.registry.mlflow_store import open_store

    store = open_store(embedded_settings)
    store.ensure_experiment("fam")
    foreign = store.client.create_experiment(
        "someone-else", artifact_location=(tmp_path / "foreign").as_uri()
    )
    db = embedded_settings.mlflow_dir / "mlflow.db"
    assert reroot_embedded_store(db, embedded_settings.artifact_root) == []
    moved = reroot_embedded_store(db, tmp_path / "new-root")
    assert [m.experiment for m in moved] == ["maml-fam"]
    assert moved[0].new == (tmp_path / "new-root" / "maml-fam").resolve().as_uri()
    assert reroot_embedded_store(db, tmp_path / "new-root") == []
    location = store.client.get_experiment(foreign).artifact_location
    assert location == (tmp_path / "foreign").as_uri()
