"""The family mirror names its champion by MLflow run, not only by version number.

A registered model deleted and created again in MLflow restarts its versions at 1: the old and
the new v1 are different runs. Oracle: the run ids recorded -- exactly the champion's run
carries the alias in the registry's listings, and ``status`` counts models adapted from the old
v1 as stale.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mamlctl.domain import CHAMPION, InitializerRef
from mamlctl.settings import Settings

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _ref(version: int, run_id: str, *, champion: bool = True) -> InitializerRef:
    return InitializerRef(
        family="sines",
        registered_model="maml-sines",
        version=version,
        run_id=run_id,
        aliases=(CHAMPION,) if champion else (),
    )


def _adapt_rows(settings: Settings, series: list[str], *, run_id: str) -> None:
    from mamlctl.registry.bulk_models import NewModel, record_models_bulk
    from mamlctl.registry.db import transaction

    with transaction(settings) as session:
        record_models_bulk(
            session,
            registered_model="maml-sines",
            initializer_version=1,
            initializer_run_id=run_id,
            support=60,
            window=24,
            horizon=6,
            adapted_at=datetime(2026, 12, 1, tzinfo=UTC),
            entries=[
                NewModel(
                    series_id=sid,
                    path=f"sines/{sid}--{run_id}.onnx",
                    sha256="a" * 64,
                    residual_scale=1.0,
                    threshold=0.99,
                    support_end=239,
                    metadata={},
                )
                for sid in series
            ],
        )


@sqlite_only
def test_a_recreated_models_v1_is_the_only_champion(seeded_registry: Any) -> None:
    from mamlctl.registry.db import transaction
    from mamlctl.registry.model_queries import list_initializer_versions
    from mamlctl.registry.series_store import SqlSeriesStore
    from mamlctl.registry.status_queries import registry_status

    settings = seeded_registry.settings
    store = SqlSeriesStore(settings)
    store.record_initializer(_ref(1, "run-before"))
    _adapt_rows(settings, ["s0", "s1", "s2"], run_id="run-before")
    # maml-sines deleted and registered again in MLflow: a new run is v1 and champion
    store.record_initializer(_ref(1, "run-after"))
    _adapt_rows(settings, ["s2"], run_id="run-after")

    assert store.get_family("sines").champion_run_id == "run-after"
    with transaction(settings) as session:
        listed = {r.run_id: r.aliases for r in list_initializer_versions(session, "sines")}
        status = next(s for s in registry_status(session) if s.family == "sines")
    assert listed == {"run-before": (), "run-after": (CHAMPION,)}
    assert (status.adapted, status.stale, status.serving_version) == (3, 2, 1)
    assert status.serving_run_id == "run-after"


@sqlite_only
def test_families_show_marks_one_champion(seeded_registry: Any) -> None:
    from typer.testing import CliRunner

    from mamlctl.cli.app import app
    from mamlctl.registry.series_store import SqlSeriesStore

    store = SqlSeriesStore(seeded_registry.settings)
    store.record_initializer(_ref(1, "run-before"))
    store.record_initializer(_ref(1, "run-after"))
    result = CliRunner().invoke(app, ["families", "show", "sines", "--json"])
    assert result.exit_code == 0, result.output
    versions = json.loads(result.stdout)["initializer_versions"]
    champions = [v["run_id"] for v in versions if CHAMPION in v["aliases"]]
    assert champions == ["run-after"]
    assert json.loads(result.stdout)["champion_run_id"] == "run-after"


def test_migration_0004_backfills_unambiguous_champions(tmp_path: Path) -> None:
    """Oracle: the rows before the migration. A champion version held by one run gets that run;
    a number two runs share (a re-created model) stays unknown rather than guessed."""
    from mamlctl.registry.db import make_engine, upgrade_schema

    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        upgrade_schema(engine, "0003_run_identity")
        with engine.begin() as conn:
            for fid, name, champion in ((1, "one", 2), (2, "two", 1), (3, "none", None)):
                conn.execute(
                    text(
                        "INSERT INTO families (id, name, window, horizon, support, alias, "
                        "champion_version, created_at, updated_at) VALUES (:id, :name, 24, 6, "
                        "60, 'champion', :champion, '2026-12-01', '2026-12-01')"
                    ),
                    {"id": fid, "name": name, "champion": champion},
                )
            for fid, version, run in ((1, 1, "a1"), (1, 2, "a2"), (2, 1, "b-old"), (2, 1, "b-new")):
                conn.execute(
                    text(
                        "INSERT INTO initializer_versions (family_id, registered_model, version, "
                        "run_id, metrics, created_at) VALUES (:f, :m, :v, :r, '{}', '2026-12-01')"
                    ),
                    {"f": fid, "m": f"maml-{fid}", "v": version, "r": run},
                )
        assert upgrade_schema(engine, "0004_champion_run") == "0004_champion_run"
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT name, champion_run_id FROM families")).all())
        assert rows == {"one": "a2", "two": None, "none": None}
    finally:
        engine.dispose()
