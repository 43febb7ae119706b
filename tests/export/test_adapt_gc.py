"""``mamlctl adapt --gc``: after a successful job, the family's unreferenced model files older
than ``--gc-grace`` are collected, and the output says what went.

Oracle: the filesystem before and after (ages set with ``os.utime``) and the registry's rows
(every file a row references, current or history, stays).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from initializer_fixtures import register_test_initializer
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.registry import model_files as mf

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
runner = CliRunner()
DAY = 86400.0


@pytest.fixture
def registered(seeded_registry: Any, tmp_path: Path, mlflow_db_template: Path) -> Any:
    seeded_registry.settings.ensure_home()
    shutil.copyfile(mlflow_db_template, seeded_registry.settings.mlflow_dir / "mlflow.db")
    register_test_initializer(seeded_registry.settings, tmp_path)
    return seeded_registry


def _plant(models_dir: Path, family: str, name: str, age_s: float) -> str:
    stored = mf.write_model_file(models_dir, family=family, series_id=name, data=name.encode())
    t = time.time() - age_s
    os.utime(models_dir / stored.relpath, (t, t))
    return stored.relpath


def _referenced(settings: Any) -> set[str]:
    from mamlctl.registry.db import transaction
    from mamlctl.registry.model_queries import referenced_model_paths

    with transaction(settings, create=False) as session:
        return referenced_model_paths(session)


@sqlite_only
def test_adapt_gc_collects_the_familys_unreferenced_files(registered: Any) -> None:
    settings = registered.settings
    models = settings.models_dir
    ghost = _plant(models, "sines", "ghost", 2 * DAY)
    young = _plant(models, "sines", "young", 60.0)
    other = _plant(models, "other", "ghost", 2 * DAY)  # another family's: never ours to touch

    plain = runner.invoke(app, ["adapt", "--family", "sines", "--json"])
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["gc"] is None
    assert {ghost, young, other} <= set(mf.iter_model_files(models))

    result = runner.invoke(app, ["adapt", "--family", "sines", "--force", "--gc", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["adapted"] == 6
    assert [c["relpath"] for c in report["gc"]["removed"]] == [ghost]
    assert report["gc"]["kept_young"] == 1 and report["gc"]["grace_s"] == DAY
    left = set(mf.iter_model_files(models))
    assert ghost not in left and {young, other} <= left
    assert _referenced(settings) <= left  # history files stay: rows point at them

    text = runner.invoke(app, ["adapt", "--family", "sines", "--gc", "--gc-grace", "0"])
    assert text.exit_code == 0, text.output
    assert "gc: removed 1 unreferenced model file(s) of sines" in text.output
    assert young not in set(mf.iter_model_files(models))
    assert other in set(mf.iter_model_files(models))


@sqlite_only
def test_gc_grace_without_gc_and_a_bad_grace_are_one_line(registered: Any) -> None:
    for args, message in (
        (["--gc-grace", "1h"], "--gc-grace needs --gc"),
        (["--gc", "--gc-grace", "soon"], "invalid duration"),
    ):
        result = runner.invoke(app, ["adapt", "--family", "sines", *args])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output
