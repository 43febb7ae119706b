"""``WatchLoop`` with the real follower (adaptation job, registry DB, ONNX files) on the embedded
MLflow store, and against a real ``mlflow server`` that is stopped and restarted on the same
port. Polls are driven by hand, so the tests wait only for real work."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from local_processes import Proc, free_port, start_mlflow_server

from mamlctl.domain import AdaptedModelRecord
from mamlctl.registry.promotion_watch import Backoff, WatchLoop
from mamlctl.settings import Settings
from mamlctl.stages.follow import AdaptingFollower, served_version

L, H, K = 24, 6, 60


def _register(settings: Settings, tmp: Path, *, seed: int, window: int = L) -> int:
    """A seeded random initializer logged as a FINISHED run and registered (no training)."""
    import torch

    from mamlctl.maml.initializer import save_initializer
    from mamlctl.maml.models import MLPConfig, build_model
    from mamlctl.registry.mlflow_store import INITIALIZER_ARTIFACT, open_store

    config = MLPConfig(input_size=window, output_size=H, hidden=(8,))
    torch.manual_seed(seed)
    folder = save_initializer(
        tmp / f"init-{seed}-{window}",
        model_config=config,
        params=dict(build_model(config).state_dict()),
        task_spec={"kind": "window", "window": window, "horizon": H, "support": K - L - H + 1},
        train_config={"inner_steps": 1, "inner_lr": 0.05},
    )
    store = open_store(settings)
    with store.start_run(family="sines", run_name=f"init-{seed}") as run:
        run.log_artifacts(folder, artifact_path=INITIALIZER_ARTIFACT)
    ref = store.register_initializer(family="sines", run_id=run.run_id, tags={}, description="t")
    return ref.version


def _current(settings: Settings) -> dict[str, AdaptedModelRecord]:
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry

    with open_registry(settings) as factory, factory() as session:
        return {r.series_id: r for r in q.current_adapted_models(session, "sines")}


def _rows(settings: Settings) -> int:
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry

    with open_registry(settings) as factory, factory() as session:
        return sum(len(q.adapted_model_history(session, f"s{i}")) for i in range(6))


def _loop(settings: Settings, **kw: Any) -> WatchLoop:
    from mamlctl.registry.mlflow_store import MlflowStore, open_store

    current: list[MlflowStore] = []

    def connect() -> MlflowStore:
        current[:] = [open_store(settings, probe_timeout_s=1.0)]
        return current[0]

    return WatchLoop(
        connect=connect,
        follower=AdaptingFollower(settings, lambda: current[0]),
        families=("sines",),
        **({"sleep": lambda s: None} | kw),
    )


@pytest.mark.slow
def test_promotion_and_rollback_readapt_once_each(sines_home: Any, tmp_path: Path) -> None:
    from mamlctl.registry.mlflow_store import open_store
    from mamlctl.registry.model_files import open_verified

    settings = sines_home.settings
    assert _register(settings, tmp_path, seed=0) == 1  # champion
    assert _register(settings, tmp_path, seed=1) == 2  # challenger
    loop = _loop(settings)
    loop.poll_once()  # nothing served yet: catch up from the champion
    assert {r.initializer_version for r in _current(settings).values()} == {1}
    assert _rows(settings) == 6
    loop.poll_once()
    assert _rows(settings) == 6 and [e.kind for e in loop.events] == ["promoted"]

    store = open_store(settings)
    store.set_alias(family="sines", version=2)
    loop.poll_once()
    loop.poll_once()
    current = _current(settings)
    assert {r.initializer_version for r in current.values()} == {2}
    assert _rows(settings) == 12  # exactly one re-adaptation per series
    assert served_version(settings, "sines") == 2
    for rec in current.values():
        open_verified(settings.models_dir, rec.path, sha256=rec.sha256)

    store.set_alias(family="sines", version=1)  # rollback
    loop.poll_once()
    assert {r.initializer_version for r in _current(settings).values()} == {1}
    assert _rows(settings) == 18
    assert [e.kind for e in loop.events] == ["promoted", "promoted", "rolled_back"]
    assert (loop.events[-1].previous, loop.events[-1].version) == (2, 1)


@pytest.mark.slow
def test_failed_readaptation_keeps_previous_models_current(sines_home: Any, tmp_path: Path) -> None:
    from mamlctl.registry.mlflow_store import open_store

    settings = sines_home.settings
    _register(settings, tmp_path, seed=0)
    loop = _loop(settings)
    loop.poll_once()
    before = _current(settings)
    assert {r.initializer_version for r in before.values()} == {1}
    # version 2 takes L=12 but the family has L=24: the adaptation job refuses it
    assert _register(settings, tmp_path, seed=2, window=12) == 2
    open_store(settings).set_alias(family="sines", version=2)
    loop.poll_once()
    loop.poll_once()
    assert [e.kind for e in loop.events] == ["promoted", "adapt_failed"]
    assert "still serving v1" in loop.events[-1].message
    assert _current(settings) == before  # the same rows, files and version serve
    assert served_version(settings, "sines") == 1


def _start_server(root: Path, port: int, name: str) -> Proc:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAMLCTL_", "MLFLOW_"))}
    return start_mlflow_server(root, port, name=name, env={**env, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_tracking_server_outage_backs_off_logs_once_and_recovers(
    sines_home: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mlflow import MlflowClient

    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    settings = Settings(home=sines_home.settings.home, tracking_uri=uri)
    server = _start_server(root, port, "mlflow-1")
    try:
        assert _register(settings, tmp_path, seed=0) == 1
        assert _register(settings, tmp_path, seed=1) == 2
        sleeps: list[float] = []  # the backoff is recorded instead of slept
        loop = _loop(settings, backoff=Backoff(initial_s=0.5, max_s=2.0), sleep=sleeps.append)
        loop.poll_once()
        assert served_version(settings, "sines") == 1
        caplog.set_level(logging.INFO, logger="mamlctl.watch")

        server.stop()
        # the alias moves while the server is away (straight in its database)
        backend = f"sqlite:///{root / 'mlflow.db'}"
        MlflowClient(tracking_uri=backend, registry_uri=backend).set_registered_model_alias(
            "maml-sines", "champion", "2"
        )
        loop.run(max_polls=4)
        assert served_version(settings, "sines") == 1  # nothing adapted during the outage
        assert [e.kind for e in loop.events] == ["promoted", "outage"]
        assert sleeps == [0.5, 1.0, 2.0]  # exponential, capped
        warnings = [
            r for r in caplog.records if r.name == "mamlctl.watch" and r.levelno >= logging.WARNING
        ]
        assert len(warnings) == 1 and uri in warnings[0].getMessage()

        server = _start_server(root, port, "mlflow-2")  # same port, same store
        loop.poll_once()
        assert [e.kind for e in loop.events] == ["promoted", "outage", "recovered", "promoted"]
        assert {r.initializer_version for r in _current(settings).values()} == {2}
        assert not loop.in_outage
    finally:
        server.stop()


@pytest.mark.slow
def test_watch_cli_once_catches_up_and_names_unknown_families(
    sines_home: Any, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from mamlctl.cli.app import app

    settings = sines_home.settings
    _register(settings, tmp_path, seed=0)
    result = CliRunner().invoke(app, ["watch", "--once", "--json", "--interval", "1s"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(e["kind"], e["family"], e["version"], e["adapted"]) for e in events] == [
        ("promoted", "sines", 1, 6)
    ]
    assert served_version(settings, "sines") == 1
    again = CliRunner().invoke(app, ["watch", "--once", "--json"])
    assert again.exit_code == 0 and not again.stdout.strip()  # nothing moved: no event
    # scheduled re-adaptation: models older than the period are re-adapted from v1 (cron)
    before = _current(settings)
    fresh = CliRunner().invoke(app, ["watch", "--once", "--json", "--readapt-every", "1h"])
    assert fresh.exit_code == 0 and not fresh.stdout.strip()  # none older than an hour
    import time

    import numpy as np

    from mamlctl.domain import Series
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.ingest import IncomingSeries, store_series

    time.sleep(1.1)
    # three series received 3 new points since (observe or ingest): only they change
    grown = {f"s{i}": sines_home.values[f"s{i}"] for i in range(3)}
    with open_registry(settings) as factory, factory.begin() as session:
        store_series(
            session,
            [
                IncomingSeries(
                    series=Series(series_id=k, values=np.r_[v, v[-24:-21]]),
                    source="seed",
                    interval_seconds=3600.0,
                )
                for k, v in grown.items()
            ],
        )
    daily = CliRunner().invoke(app, ["watch", "--once", "--json", "--readapt-every", "1s"])
    assert daily.exit_code == 0, daily.output
    events = [json.loads(line) for line in daily.stdout.splitlines() if line.startswith("{")]
    assert [(e["kind"], e["version"], e["adapted"]) for e in events] == [("readapted", 1, 3)]
    after = _current(settings)
    assert set(after) == set(before)
    newer = {s for s in before if after[s].adapted_at > before[s].adapted_at}
    assert newer == set(grown)  # the others hold no new point: the same model, kept
    assert all(after[s].support_end == before[s].support_end + 3 for s in grown)
    assert {r.initializer_version for r in after.values()} == {1}
    unknown = CliRunner().invoke(app, ["watch", "--family", "nope", "--once"])
    assert unknown.exit_code == 1
    assert unknown.output.strip().splitlines()[-1].startswith("error: ")
    bad = CliRunner().invoke(app, ["watch", "--interval", "soon", "--once"])
    assert bad.exit_code == 1 and "invalid duration" in bad.output


def test_a_recreated_registered_model_is_followed_by_run_id(
    sines_home: Any, tmp_path: Path
) -> None:
    """Regression (issue item 3): deleting the registered model in MLflow and registering
    again restarts versions at 1. Oracle: the MLflow run ids -- the new v1 is another run, so
    adapt adapts from it (no "already recorded"), watch re-adapts once, and every current
    model names the new run."""
    from mamlctl.maml.adaptation import AdaptConfig
    from mamlctl.registry.mlflow_store import open_store
    from mamlctl.stages.adapt import AdaptRequest
    from mamlctl.stages.api import run_adaptation

    settings = sines_home.settings
    assert _register(settings, tmp_path, seed=0) == 1
    loop = _loop(settings)
    loop.poll_once()
    first_run = {r.initializer_run_id for r in _current(settings).values()}
    assert len(first_run) == 1 and len(_current(settings)) == 6

    store = open_store(settings)
    store.client.delete_registered_model("maml-sines")
    assert _register(settings, tmp_path, seed=1) == 1  # v1 again, another run
    new_ref = open_store(settings).resolve_alias("sines")
    assert new_ref.version == 1 and {new_ref.run_id} != first_run

    loop.poll_once()  # watch: same number, another run -> re-adapt
    assert [e.kind for e in loop.events] == ["promoted", "promoted"]
    assert {r.initializer_run_id for r in _current(settings).values()} == {new_ref.run_id}
    report = run_adaptation(settings, store, AdaptRequest(family="sines"), AdaptConfig())
    assert (report.adapted, report.up_to_date) == (0, 6)
    loop.poll_once()
    assert len(loop.events) == 2  # nothing more to do
