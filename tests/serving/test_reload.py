"""Hot reload under concurrent load, on a real uvicorn server on loopback.

Oracle: the registry records of the old (v1) and new (v2) models. Every request must succeed,
name v1 or v2, be answered entirely by one state (a batch never mixes generations), carry the
forecast of exactly the file its lineage names (checked against that file in onnxruntime), and
each client's sequence must never go back from v2 to v1.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import MLP
from local_processes import free_port
from serving_models import write_series

from mamlctl.serving.app import ServeOptions, create_app
from mamlctl.serving.fastpath import ScoreHttpProtocol
from mamlctl.serving.runtime import make_session
from mamlctl.serving.source import StaticSource
from mamlctl.settings import Settings

IDS = [f"m{i}" for i in range(5)]


@pytest.mark.slow
def test_hot_reload_under_concurrent_requests(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    v1 = write_series(settings.models_dir, MLP, IDS, seed=1, version=1)
    source = StaticSource(v1, models_dir=settings.models_dir)
    app = create_app(settings, source, options=ServeOptions(reload_interval=0.05))
    port = free_port()
    server = uvicorn.Server(  # the HTTP protocol `mamlctl serve` runs (POST /v1/score fast path)
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            http=ScoreHttpProtocol,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    else:
        pytest.fail("server never became ready")

    window = [float(v) for v in np.linspace(-3, 3, MLP.window)]
    stop = threading.Event()
    logs: list[list[tuple[int, Any]]] = [[] for _ in range(4)]

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as http:
            i = 0
            while not stop.is_set():
                if k % 2:
                    body: Any = {"items": [{"series_id": s, "window": window} for s in IDS]}
                else:
                    body = {"series_id": IDS[i % len(IDS)], "window": window}
                r = http.post("/v1/score", json=body)
                logs[k].append((r.status_code, r.json()))
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]

    def settle(counts: list[int], more: int = 3) -> None:
        """Wait until every client has made ``more`` requests since ``counts``."""
        limit = time.monotonic() + 30
        while time.monotonic() < limit and any(
            len(log) < c + more for log, c in zip(logs, counts, strict=True)
        ):
            time.sleep(0.02)

    for t in threads:
        t.start()
    settle([0] * 4)
    v2 = write_series(settings.models_dir, MLP, IDS, seed=2, version=2)
    source.replace(v2)
    swap_deadline = time.monotonic() + 15
    while time.monotonic() < swap_deadline:
        if httpx.get(f"{base}/readyz").json()["generation"] >= 2:
            break
        time.sleep(0.05)
    settle([len(log) for log in logs])
    stop.set()
    for t in threads:
        t.join()
    server.should_exit = True
    thread.join(timeout=10)

    assert sum(len(log) for log in logs) >= 20
    by_sha = {rec.sha256: rec for rec in v1 + v2}
    sessions = {
        sha: make_session((settings.models_dir / rec.path).read_bytes())
        for sha, rec in by_sha.items()
    }
    win = np.array([window], dtype=np.float32)
    versions_seen = set()
    checked = 0
    for log in logs:
        assert log, "a client made no request"
        last = 1
        for status, body in log:
            assert status == 200, body
            results = body.get("results", [body])
            gens = {res["lineage"]["generation"] for res in results}
            assert len(gens) == 1  # one request, one state
            versions = {res["lineage"]["initializer_version"] for res in results}
            assert len(versions) == 1 and versions <= {1, 2}
            version = versions.pop()
            assert version >= last  # never back to the old models
            last = version
            versions_seen.add(version)
            for res in results:
                rec = by_sha[res["lineage"]["model_sha256"]]
                assert rec.series_id == res["series_id"] and rec.initializer_version == version
                if checked < 200:  # the numbers come from the file the lineage names
                    ref = sessions[rec.sha256].run(None, {"window": win})[0][0]
                    got = np.array(res["forecast"], dtype=np.float32)
                    scale = float(rec.metadata["scale"])
                    assert (np.abs(got - ref) <= 1e-6 * scale + 4 * np.spacing(np.abs(ref))).all()
                    checked += 1
    assert versions_seen == {1, 2}
    assert all(
        log[-1][1].get("results", [log[-1][1]])[0]["lineage"]["initializer_version"] == 2
        for log in logs
    )
