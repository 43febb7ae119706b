"""The server reads the registry database: current adapted models, and reloads on change.

Runs on SQLite and PostgreSQL (``seeded_registry`` is parametrised over both backends).
"""

from __future__ import annotations

import pytest
from conftest import Client
from serving_models import Spec, write_series

from mamlctl.registry.db import open_registry
from mamlctl.registry.model_queries import (
    current_adapted_models,
    record_adapted_model,
    record_initializer_version,
)
from mamlctl.serving.app import ServeOptions, create_app
from mamlctl.serving.source import RegistrySource
from mamlctl.settings import Settings

SINES = Spec(kind="mlp", window=24, horizon=6)


def _record(settings: Settings, ids: list[str], *, version: int, seed: int) -> None:
    recs = write_series(settings.models_dir, SINES, ids, seed=seed, version=version, family="sines")
    with open_registry(settings) as factory, factory.begin() as sess:
        record_initializer_version(sess, family="sines", version=version, run_id=f"run{version}")
        for rec in recs:
            record_adapted_model(
                sess,
                series_id=rec.series_id,
                registered_model="maml-sines",
                initializer_version=version,
                path=rec.path,
                sha256=rec.sha256,
                support=rec.support,
                window=rec.window,
                horizon=rec.horizon,
                residual_scale=rec.residual_scale,
                threshold=rec.threshold,
                adapted_at=rec.adapted_at,
            )


def test_serves_the_registrys_current_models_and_reloads_on_change(seeded_registry) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_registry.settings
    ids = [f"s{i}" for i in range(6)]
    _record(settings, ids, version=1, seed=1)
    source = RegistrySource(settings)
    with open_registry(settings) as factory, factory() as sess:  # the registry's own query
        assert source.current() == current_adapted_models(sess)
    app = create_app(settings, source, options=ServeOptions(reload=False))
    assert app.holder.reload(force=True)
    client = Client(app)
    assert client.get("/readyz").json()["series"] == 6
    first = source.fingerprint()
    assert app.holder.reload() is False  # nothing changed: no rebuild
    body = client.post("/v1/score", json={"series_id": "s3", "window": [5.0] * 24}).json()
    assert body["lineage"]["initializer_version"] == 1
    assert body["lineage"]["registered_model"] == "maml-sines"

    _record(settings, ["s3"], version=2, seed=2)
    with open_registry(settings) as factory, factory() as sess:
        assert source.current() == current_adapted_models(sess)
    assert source.fingerprint() != first
    assert app.holder.reload() is True
    after = client.post("/v1/score", json={"series_id": "s3", "window": [5.0] * 24}).json()
    assert after["lineage"]["initializer_version"] == 2
    assert after["lineage"]["generation"] == 2
    assert after["forecast"] != body["forecast"]
    other = client.post("/v1/score", json={"series_id": "s1", "window": [5.0] * 24}).json()
    assert other["lineage"]["initializer_version"] == 1
    assert client.get("/readyz").json()["series"] == 6
    source.close()


def test_an_unreachable_database_keeps_the_last_state(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    app = create_app(settings, RegistrySource(settings), options=ServeOptions(reload=False))
    assert app.holder.reload(force=True) is False
    ready = Client(app).get("/readyz")
    assert ready.status_code == 503 and "unreachable" in ready.json()["detail"]
    assert "refused" not in ready.text and "5432" not in ready.text  # no driver text
    assert "refused" in (app.holder.last_error or "")  # the log has it
    metrics = Client(app).get("/metrics").text
    assert 'mamlctl_reloads_total{outcome="error"} 1.0' in metrics


@pytest.mark.parametrize(
    "text,seconds", [("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("3", 3.0), ("100us", 1e-4)]
)
def test_reload_interval_parsing(text: str, seconds: float) -> None:
    from mamlctl.cli.serve import parse_duration

    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)
