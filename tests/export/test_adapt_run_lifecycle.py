"""The adaptation job's MLflow run is terminated in every path, and agrees with the registry.

Oracles: the registry database (rows committed = the job succeeded), MLflow's run status, and
the process table (a run whose owner process is gone is ended KILLED by the next job; one whose
owner lives is left alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from initializer_fixtures import register_test_initializer
from local_processes import free_port, mamlctl_argv, start_mlflow_server
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.registry.run_owner import TAG_HOST, TAG_PID, TAG_STARTED, is_stale, owner_tags
from mamlctl.settings import Settings

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
runner = CliRunner()


def _current_count(settings: Settings) -> int:
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry

    with open_registry(settings) as factory, factory() as session:
        return len(q.current_adapted_models(session, "sines"))


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.slow
@sqlite_only
def test_tracking_server_gone_at_the_end_of_a_job(
    seeded_registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the server stopping after the job committed made ``adapt`` exit 1 (and a
    retry said "up to date"); now it succeeds with one warning line on stderr naming the run,
    and the next job ends that RUNNING run KILLED."""
    from mamlctl.stages import adapt_chunks

    root = tmp_path / "server"
    root.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = free_port()
    server = start_mlflow_server(root, port, env=env)
    try:
        uri = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("MAMLCTL_TRACKING_URI", uri)
        settings = seeded_registry.settings
        register_test_initializer(Settings(home=settings.home), tmp_path)

        original = adapt_chunks.ChunkedJob.run

        def run_then_lose_the_server(self: Any, *args: Any, **kwargs: Any) -> Any:
            counts = original(self, *args, **kwargs)  # every chunk is committed here
            server.stop()
            return counts

        monkeypatch.setattr(adapt_chunks.ChunkedJob, "run", run_then_lose_the_server)
        result = runner.invoke(app, ["adapt", "--family", "sines", "--json"])
        monkeypatch.setattr(adapt_chunks.ChunkedJob, "run", original)
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["adapted"] == 6 and _current_count(settings) == 6
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and report["run_id"] in warnings[0], result.stderr
    assert report["warnings"] == [warnings[0].removeprefix("warning: ")]

    # The same store, served again: the run is still RUNNING; the next job ends it KILLED.
    port = free_port()
    server = start_mlflow_server(root, port, env=env, name="mlflow-again")
    try:
        uri = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("MAMLCTL_TRACKING_URI", uri)
        client = _client(uri)
        assert client.get_run(report["run_id"]).info.status == "RUNNING"
        again = runner.invoke(app, ["adapt", "--family", "sines", "--force", "--json"])
        assert again.exit_code == 0, again.output
        second = json.loads(again.stdout)
        assert second["stale_runs_ended"] == [report["run_id"]]
        assert client.get_run(report["run_id"]).info.status == "KILLED"
        assert client.get_run(second["run_id"]).info.status == "FINISHED"
        assert client.get_run(second["run_id"]).data.metrics["series_adapted"] == 6
    finally:
        server.stop()


def _running_runs(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        rows = conn.execute(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE r.status = 'RUNNING' AND t.key = 'mamlctl.kind' AND t.value = 'adapt'"
        ).fetchall()
    return [str(r[0]) for r in rows]


@pytest.mark.slow
@sqlite_only
def test_kill_9_mid_job_then_the_rerun_ends_the_stale_run(
    seeded_registry: Any, tmp_path: Path, mlflow_db_template: Path
) -> None:
    """A subprocess ``mamlctl adapt`` killed with SIGKILL while its run is RUNNING: the run
    carries its host and pid; the next ``adapt`` ends it KILLED and logs its own run."""
    settings = seeded_registry.settings
    settings.ensure_home()
    db = settings.mlflow_dir / "mlflow.db"
    shutil.copyfile(mlflow_db_template, db)
    register_test_initializer(settings, tmp_path)
    env = {**os.environ, "MAMLCTL_HOME": str(settings.home), "OMP_NUM_THREADS": "1"}
    argv = mamlctl_argv("adapt", "--family", "sines", "--chunk", "1")
    with subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 240
        running: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None and not running:
            with contextlib.suppress(sqlite3.OperationalError):  # locked by the writer
                running = _running_runs(db)
            time.sleep(0.02)
        assert running and proc.poll() is None, "the job ended before its run was seen"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stale = running[0]
    client = _client(settings.resolved_tracking_uri)
    run = client.get_run(stale)
    assert run.info.status == "RUNNING"
    assert run.data.tags[TAG_PID] == str(proc.pid)
    assert run.data.tags[TAG_HOST] == socket.gethostname()
    assert float(run.data.tags[TAG_STARTED]) <= time.time()

    result = runner.invoke(app, ["adapt", "--family", "sines", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stale_runs_ended"] == [stale]
    ended = client.get_run(stale)
    assert ended.info.status == "KILLED"
    assert str(proc.pid) in ended.data.tags["mamlctl.end_reason"]
    assert client.get_run(report["run_id"]).info.status == "FINISHED"
    assert report["adapted"] + report["up_to_date"] == 6


def test_only_runs_of_gone_processes_of_this_host_are_stale() -> None:
    """Oracle: the process table. A live process that started before the run owns it; a pid
    that is free, or reused by a process younger than the run, does not; other hosts and
    this process's open runs are never stale."""
    from mamlctl.registry import run_owner

    host = socket.gethostname()
    parent = {TAG_HOST: host, TAG_PID: str(os.getppid()), TAG_STARTED: f"{time.time():.3f}"}
    assert not is_stale(parent, "r1", host=host)
    reused = {**parent, TAG_STARTED: "1000.0"}  # the run is older than that process
    assert is_stale(reused, "r1", host=host)
    with subprocess.Popen(["true"]) as gone:
        gone.wait()
    dead = {**parent, TAG_PID: str(gone.pid)}
    assert is_stale(dead, "r1", host=host)
    assert not is_stale({**dead, TAG_HOST: "elsewhere"}, "r1", host=host)
    assert not is_stale({TAG_HOST: host}, "r1", host=host)  # no owner tags: not ours
    mine = owner_tags()
    run_owner.mark_open("r-open")
    try:
        assert not is_stale(mine, "r-open", host=host)
        assert is_stale(mine, "r-closed", host=host)
    finally:
        run_owner.mark_closed("r-open")
