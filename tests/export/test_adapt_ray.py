"""``mamlctl adapt --ray``: adaptation chunks as Ray tasks on a real local cluster of two nodes
(``ray start --head`` + ``ray start --address``, one CPU each), started and torn down here.

Oracles: the in-process ``adapt`` of the same registry (same counts, same rows, ONNX files
that compute bit-equal outputs), and, with a worker SIGKILLed right after its chunk's
transaction committed, every series recorded exactly once by the job. The registry is
PostgreSQL when a server answers on 127.0.0.1:5432 (a cluster's registry), else SQLite.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from initializer_fixtures import register_test_initializer
from local_processes import free_port

from mamlctl.domain import Family, Series
from mamlctl.settings import Settings

ray = pytest.importorskip("ray", reason="adapt --ray needs ray (pip install 'mamlctl[ray]')")

pytestmark = pytest.mark.ray

#: 36 series that adapt (240 points), 3 served zero-shot (L <= n < K).
ADAPTED, ZERO_SHOT = 36, 3
CHUNK = "8"  # 5 chunks (+ the zero-shot batch): both nodes get work
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A head node and a second node (one CPU each) on loopback; their process groups are
    killed afterwards (never ``ray stop``: it would stop every Ray on the machine)."""
    temp = tempfile.mkdtemp(prefix="mr", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1"]
    head_cmd = [
        RAY, "start", "--head", "--port", str(port), "--include-dashboard=false",
        "--dashboard-port", str(free_port()), "--temp-dir", temp, *common,
    ]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    logs = Path(temp)
    try:
        procs.append(_start(head_cmd, env, logs / "head.log"))
        _wait_for_port(port, procs[0])
        procs.append(_start([RAY, "start", "--address", address, *common], env, logs / "n2.log"))
        _wait_for_log(logs / "n2.log", "Ray runtime started", procs[1])
        yield address
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start --head exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise RuntimeError("the Ray head node did not listen within 60 s")


def _wait_for_log(log: Path, line: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ray start exited: {log.read_text()[-2000:]}"
        if line in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"no {line!r} in {log} within 60 s")


@pytest.fixture(scope="module")
def ray_driver(ray_cluster: str) -> Iterator[str]:
    """This process as the Ray driver of the module's jobs (``adapt --ray`` through the
    CliRunner reuses the connection), so that the second job finds the workers warm."""
    import logging

    ray.init(address=ray_cluster, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield ray_cluster
    finally:
        ray.shutdown()


@pytest.fixture
def registry_url(request: pytest.FixtureRequest) -> str:
    """PostgreSQL when a server answers (a cluster's registry), else the embedded SQLite."""
    try:
        return str(request.getfixturevalue("postgres_url"))
    except pytest.skip.Exception:
        return str(request.getfixturevalue("sqlite_url"))


@pytest.fixture
def home(
    registry_url: str,
    tmp_settings: Settings,
    tmp_path: Path,
    mlflow_db_template: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """A registry with family ``sines`` (39 series), a registered initializer and a model
    store outside the home (``MAMLCTL_MODELS_ROOT``); the environment names them for the CLI."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.ingest import IncomingSeries, store_series

    shared = tmp_path / "shared-models"
    shared.mkdir()
    monkeypatch.setenv("MAMLCTL_MODELS_ROOT", str(shared))
    database = None if registry_url.startswith("sqlite") else registry_url
    if database:
        monkeypatch.setenv("MAMLCTL_DATABASE_URL", database)
    settings = Settings(home=tmp_settings.home, database_url=database, models_root=shared)
    settings.ensure_home()
    shutil.copyfile(mlflow_db_template, settings.mlflow_dir / "mlflow.db")
    family = Family(
        name="sines", period=24, interval_seconds=3600.0, window=24, horizon=6, support=60
    )
    lengths = [240] * ADAPTED + [40] * ZERO_SHOT
    series = [
        Series(
            series_id=f"s{i:02d}",
            values=sine_values(n, amplitude=1 + 0.05 * i, phase=0.3 * i, level=5 + i, seed=i),
        )
        for i, n in enumerate(lengths)
    ]
    with open_registry(settings) as factory, factory.begin() as session:
        q.upsert_family(session, family)
        store_series(
            session,
            [IncomingSeries(series=s, source="seed", interval_seconds=3600.0) for s in series],
        )
        q.assign_family(session, "sines", [s.series_id for s in series])
    register_test_initializer(settings, tmp_path)
    return settings


def sine_values(n: int, *, amplitude: float, phase: float, level: float, seed: int) -> Any:
    """A seeded daily sine (period 24) with Gaussian noise."""
    t = np.arange(n, dtype=np.float64)
    noise = 0.05 * np.random.default_rng(seed).standard_normal(n)
    return level + amplitude * np.sin(2 * np.pi * t / 24 + phase) + noise


def _adapt(*args: str) -> dict[str, Any]:
    """``mamlctl adapt`` in this process: without ``--ray`` the oracle, with it this process is
    the driver (see ``ray_driver``)."""
    from typer.testing import CliRunner

    from mamlctl.cli.app import app

    result = CliRunner().invoke(
        app, ["adapt", "--family", "sines", "--chunk", CHUNK, "--json", *args]
    )
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def _rows(settings: Settings) -> dict[str, list[Any]]:
    """Every series' adapted models, oldest first."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry

    with open_registry(settings) as factory, factory() as session:
        ids = [r.series_id for r in q.current_adapted_models(session, "sines")]
        return {sid: q.adapted_model_history(session, sid) for sid in ids}


def _outputs(settings: Settings, record: Any) -> dict[str, np.ndarray]:
    """What the record's ONNX file computes on fixed windows (onnxruntime, the server's)."""
    import onnxruntime as ort

    from mamlctl.registry.model_files import open_verified

    blob = open_verified(settings.models_dir, record.path, sha256=record.sha256)
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    window = int(feed.shape[-1]) if isinstance(feed.shape[-1], int) else record.window
    rng = np.random.default_rng(0)
    x = (5 + rng.standard_normal((16, window))).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {feed.name: x}), strict=True))


def _same_numbers(a: Any, b: Any) -> None:
    assert (a.residual_scale, a.threshold, a.support_end) == (
        b.residual_scale,
        b.threshold,
        b.support_end,
    )
    for key in ("loc", "scale", "adaptation"):
        assert a.metadata.get(key) == b.metadata.get(key)


def test_adapt_on_ray_equals_in_process(ray_driver: str, home: Settings) -> None:
    local = _adapt()
    before = _rows(home)
    remote = _adapt("--force", "--ray", ray_driver)
    after = _rows(home)

    for key in ("adapted", "zero_shot", "up_to_date", "too_short", "selected", "plan"):
        assert remote[key] == local[key], key
    assert (local["adapted"], local["zero_shot"]) == (ADAPTED, ZERO_SHOT)
    assert remote["metrics"] == local["metrics"]  # same chunks, summed in the same order
    assert [p["series_id"] for p in remote["parity"]] == [p["series_id"] for p in local["parity"]]
    assert local["cluster"] is None
    cluster = remote["cluster"]
    assert cluster["tasks"] == 5  # 39 series in chunks of 8
    assert sum(w["series"] for w in cluster["workers"]) == ADAPTED + ZERO_SHOT
    assert sorted(after) == sorted(before)
    for sid, history in after.items():
        assert len(history) == 2  # the in-process model, then the Ray job's
        old, new = history
        assert new.is_current and not old.is_current
        assert new.metadata["adapt_run_id"] == remote["run_id"]
        _same_numbers(old, new)
        a, b = _outputs(home, old), _outputs(home, new)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{sid} {name}")


def test_adapt_on_ray_survives_a_killed_worker(
    ray_driver: str, home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "killed"
    monkeypatch.setenv("MAMLCTL_TEST_RAY_FAULT", f"after-record:{marker}")
    report = _adapt("--ray", ray_driver)
    monkeypatch.delenv("MAMLCTL_TEST_RAY_FAULT")
    assert marker.is_file()  # a worker died right after its chunk's transaction committed
    killed = int(marker.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(killed, 0)
        pytest.fail(f"worker {killed} should be dead")
    assert (report["adapted"], report["zero_shot"]) == (ADAPTED, ZERO_SHOT)
    rows = _rows(home)
    assert len(rows) == ADAPTED + ZERO_SHOT
    for sid, history in rows.items():
        assert len(history) == 1, sid  # recorded exactly once, the retry skipped it
        assert history[0].is_current
        assert history[0].metadata["adapt_run_id"] == report["run_id"]
    # and the job is complete: a rerun finds nothing to do
    again = _adapt()
    assert again["up_to_date"] == ADAPTED + ZERO_SHOT and again["adapted"] == 0


def test_adapt_ray_unreachable_address_is_one_line(home: Settings) -> None:
    """``mamlctl adapt`` as a user runs it (its own process): one line, exit 1."""
    cmd = [sys.executable, "-c", "from mamlctl.cli.app import main; main()"]
    port = free_port()
    out = subprocess.run(
        [*cmd, "adapt", "--family", "sines", "--ray", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in lines[0]


@pytest.mark.parametrize("address", ["foo", "127.0.0.1:0", "127.0.0.1:http"])
def test_adapt_ray_bad_address_is_a_config_error(address: str) -> None:
    from mamlctl.errors import ConfigError
    from mamlctl.stages.adapt_ray import connect

    with pytest.raises(ConfigError, match="invalid Ray address"):
        connect(address)


def test_adapt_ray_address_of_another_server_is_refused() -> None:
    """A port that answers but is no Ray head (a database, a web server) fails at once, instead
    of ray.init retrying for ever."""
    import socket
    import threading

    from mamlctl.errors import StoreError
    from mamlctl.stages.adapt_ray import connect

    with socket.create_server(("127.0.0.1", 0)) as server:

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        port = server.getsockname()[1]
        with pytest.raises(StoreError, match="not as a Ray head node"):
            connect(f"127.0.0.1:{port}")
        thread.join(timeout=10)
