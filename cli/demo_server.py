"""The scoring server inside the demo's process: uvicorn in a thread on a free loopback port,
and the few HTTP calls the demo makes to it (httpx). Not a command module."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mamlctl.errors import StoreError

if TYPE_CHECKING:
    import httpx
    import uvicorn

    from mamlctl.settings import Settings

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class ThreadedServer:
    """``mamlctl serve``'s app (registry source, hot reload) served from a daemon thread."""

    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def wait(self) -> None:
        """Block until Ctrl-C (``--keep-server``)."""
        try:
            while self.thread.is_alive():
                self.thread.join(0.5)
        finally:
            self.stop()


def start_server(
    settings: Settings, *, port: int | None = None, reload_interval_s: float = 1.0
) -> ThreadedServer:
    """Start the scoring server in this process and wait until it is listening."""
    import uvicorn

    from mamlctl.serving.app import ServeOptions, create_app
    from mamlctl.serving.source import RegistrySource

    app = create_app(
        settings,
        RegistrySource(settings),
        options=ServeOptions(reload_interval=reload_interval_s),
    )
    chosen = port or free_port()
    config = uvicorn.Config(
        app,
        host=HOST,
        port=chosen,
        log_level="warning",
        access_log=False,
        lifespan="on",
        loop="asyncio",
        http="h11",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="mamlctl-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise StoreError(f"the scoring server did not start on {HOST}:{chosen}")
        time.sleep(0.05)
    return ThreadedServer(server=server, thread=thread, url=f"http://{HOST}:{chosen}")


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
