"""The scoring server of the demo: ``mamlctl serve`` itself, started as a child process on a
free loopback port, and the few HTTP calls the demo makes to it (httpx). Not a command module.

The demo's latency line is therefore what ``mamlctl serve`` answers (its HTTP fast path,
uvloop, one worker), not an in-process stand-in sharing the demo's interpreter and GIL.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mamlctl.errors import StoreError

if TYPE_CHECKING:
    import httpx

    from mamlctl.settings import Settings

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class ServerProcess:
    """A running ``mamlctl serve`` (registry source, hot reload) on ``url``."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def wait(self) -> None:
        """Block until Ctrl-C (``--keep-server``) or the server exits."""
        try:
            self.process.wait()
        finally:
            self.stop()


def start_server(
    settings: Settings, *, port: int | None = None, reload_interval_s: float = 1.0
) -> ServerProcess:
    """Start ``mamlctl serve`` on ``settings``' home and wait until it accepts connections.

    Its log goes to ``serve.log`` in the home; a server that exits or does not listen within
    60 s is a :class:`StoreError` naming that log's last line."""
    chosen = port or free_port()
    # hermetic, as the demo's own settings: no MAMLCTL_*/MLFLOW_* of the caller's shell
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAMLCTL_", "MLFLOW_"))}
    env["MAMLCTL_HOME"] = str(settings.home)
    if settings.database_url:
        env["MAMLCTL_DATABASE_URL"] = settings.database_url
    log_path = settings.home / "serve.log"
    command = [
        sys.executable,
        "-c",
        "from mamlctl.cli.app import main; main()",
        "serve",
        "--host",
        HOST,
        "--port",
        str(chosen),
        "--reload-interval",
        f"{reload_interval_s:g}s",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = ServerProcess(process=process, url=f"http://{HOST}:{chosen}", log_path=log_path)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise StoreError(f"the scoring server exited ({process.returncode}): {_tail(log_path)}")
        try:
            with socket.create_connection((HOST, chosen), timeout=1):
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise StoreError(f"the scoring server did not start on {HOST}:{chosen}")
        time.sleep(0.05)


def _tail(path: Path) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


def wait_ready(client: httpx.Client, *, timeout_s: float = 60.0) -> dict[str, Any]:
    """Poll ``/readyz`` until the models are loaded; its body."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get("/readyz")
        if response.status_code == 200:
            return dict(response.json())
        if time.monotonic() > deadline:
            raise StoreError(f"scoring server not ready after {timeout_s:.0f} s: {response.text}")
        time.sleep(0.1)


def score(client: httpx.Client, item: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/score", json=item)
    if response.status_code != 200:
        raise StoreError(
            f"scoring {item['series_id']} failed: HTTP {response.status_code} {response.text[:200]}"
        )
    return dict(response.json())


def measure_latency(
    client: httpx.Client, items: Sequence[dict[str, Any]], *, requests: int
) -> dict[str, float]:
    """Round-trip milliseconds of ``requests`` sequential single-item calls (keep-alive)."""
    samples: list[float] = []
    for i in range(requests):
        item = items[i % len(items)]
        began = time.perf_counter()
        response = client.post("/v1/score", json=item)
        samples.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
    samples.sort()
    return {
        "requests": float(requests),
        "p50_ms": round(statistics.median(samples), 3),
        "p90_ms": round(samples[min(len(samples) - 1, int(0.9 * len(samples)))], 3),
        "max_ms": round(samples[-1], 3),
    }
