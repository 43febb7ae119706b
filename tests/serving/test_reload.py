"""Hot reload under concurrent load, on a real uvicorn server on loopback; reloads meeting
files that fail; readiness.

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
from conftest import MLP, Client
from local_processes import free_port
from serving_models import write_series

from mamlctl.serving import schemas
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


# ----------------------------------------------------------------------------- failed files

W12 = [float(v) for v in np.linspace(-3, 3, MLP.window)]


def _file_forecast(models: Path, rec: Any) -> np.ndarray:
    window = np.array([W12], dtype=np.float32)
    return make_session((models / rec.path).read_bytes()).run(None, {"window": window})[0][0]


def _close(got: list[float], ref: np.ndarray, rec: Any) -> bool:
    """The bank's tolerance to each file (test_bank): 1e-6 of the scale plus 4 ulp."""
    g, scale = np.array(got, dtype=np.float32), float(rec.metadata["scale"])
    return bool((np.abs(g - ref) <= 1e-6 * scale + 4 * np.spacing(np.abs(ref))).all())


def _serve(tmp_path: Path, **options: Any) -> tuple[Any, Client, StaticSource, Path, list[Any]]:
    settings = Settings(home=tmp_path / "home")
    models = settings.models_dir
    v1 = write_series(models, MLP, IDS, seed=1, version=1)
    source = StaticSource(v1, models_dir=models)
    app = create_app(settings, source, options=ServeOptions(reload=False, **options))
    assert app.holder.reload(force=True)
    return app, Client(app), source, models, v1


def test_a_reload_keeps_the_previous_model_of_a_series_whose_new_file_fails(
    tmp_path: Path,
) -> None:
    """Oracle: the v1 file (for the series whose v2 file fails) and the v2 files (the others)
    run by onnxruntime, exactly; then the restored v2 file, without any change of the source."""
    app, client, source, models, v1 = _serve(tmp_path, max_failed_share=1.0)
    items = [{"series_id": sid, "window": W12} for sid in IDS]
    before = client.post("/v1/score", json={"items": items}).json()["results"]
    v2 = write_series(models, MLP, IDS, seed=2, version=2)
    tampered = models / v2[1].path
    good_bytes = tampered.read_bytes()
    tampered.write_bytes(good_bytes + b"\0")  # m1: sha256 mismatch
    (models / v2[2].path).unlink()  # m2: cannot be read
    source.replace(v2)
    assert app.holder.reload() is True
    expected = {0: v2[0], 1: v1[1], 2: v1[2], 3: v2[3], 4: v2[4]}
    results = client.post("/v1/score", json={"items": items}).json()["results"]
    for k, res in enumerate(results):
        rec = expected[k]
        assert res["lineage"]["model_sha256"] == rec.sha256 and res["lineage"]["generation"] == 2
        assert _close(res["forecast"], _file_forecast(models, rec), rec)
    assert [r["forecast"] for r in results[1:3]] == [r["forecast"] for r in before[1:3]]
    detail = client.get("/v1/series/m1").json()
    assert "sha256" in detail["load_error"] and detail["lineage"]["initializer_version"] == 1
    assert client.get("/v1/series/m2").json()["load_error"]
    assert client.get("/v1/series/m0").json()["load_error"] is None
    ready = client.get("/readyz").json()
    assert (ready["failures"], ready["stale"], ready["records"]) == (2, 2, 5)

    tampered.write_bytes(good_bytes)  # restored: the next poll brings v2 of m1 back
    assert app.holder.reload() is True
    res = client.post("/v1/score", json=items[1]).json()
    assert res["lineage"]["model_sha256"] == v2[1].sha256
    assert _close(res["forecast"], _file_forecast(models, v2[1]), v2[1])
    assert client.get("/v1/series/m1").json()["load_error"] is None
    assert client.get("/v1/series/m2").json()["lineage"]["model_sha256"] == v1[2].sha256
    assert app.holder.reload() is False  # m2 still missing: no rebuild on every poll


def test_a_file_corrupted_in_place_keeps_serving_from_memory(tmp_path: Path) -> None:
    app, client, _, models, v1 = _serve(tmp_path, max_failed_share=1.0)
    before = client.post("/v1/score", json={"series_id": "m3", "window": W12}).json()
    (models / v1[3].path).write_bytes(b"garbage")
    assert app.holder.reload(force=True) is True
    after = client.post("/v1/score", json={"series_id": "m3", "window": W12}).json()
    assert after["forecast"] == before["forecast"] and after["lineage"]["generation"] == 2
    assert "sha256" in client.get("/v1/series/m3").json()["load_error"]


def test_readiness_tells_the_share_of_failed_models(tmp_path: Path) -> None:
    app, client, source, models, _ = _serve(tmp_path, max_failed_share=0.3)
    assert client.get("/readyz").status_code == 200
    v2 = write_series(models, MLP, IDS, seed=2, version=2)
    (models / v2[0].path).write_bytes(b"x")
    source.replace(v2)
    assert app.holder.reload()
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["failures"] == 1  # 1/5 <= 0.3
    (models / v2[1].path).write_bytes(b"x")
    assert app.holder.reload(force=True)
    ready = client.get("/readyz")
    body = ready.json()
    assert ready.status_code == 503 and body["status"] == "degraded"
    assert body["detail"] == "2 of 5 current models failed to load" and body["series"] == 5
    schemas.Ready.model_validate(body)


@pytest.mark.parametrize("allow_empty", [False, True])
def test_readiness_with_no_model_loaded(tmp_path: Path, allow_empty: bool) -> None:
    settings = Settings(home=tmp_path / "home")
    source = StaticSource([], models_dir=settings.models_dir)
    options = ServeOptions(reload=False, allow_empty=allow_empty)
    app = create_app(settings, source, options=options)
    assert app.holder.reload(force=True)
    ready = Client(app).get("/readyz")
    assert ready.status_code == (200 if allow_empty else 503)
    assert ready.json()["status"] == ("ready" if allow_empty else "degraded")


@pytest.mark.parametrize("before_accept", [True, False])
def test_load_before_accept_finishes_the_first_load_inside_startup(
    tmp_path: Path, before_accept: bool
) -> None:
    """``serve --workers N`` workers share one socket and uvicorn accepts on it only after
    lifespan startup: with ``load_before_accept`` the models are loaded when startup completes
    (so no request meets a loading worker's 503); without it the load runs in the background."""
    import asyncio

    settings = Settings(home=tmp_path / "home")
    records = write_series(settings.models_dir, MLP, IDS, seed=1, version=1)
    source = StaticSource(records, models_dir=settings.models_dir)
    options = ServeOptions(reload=False, load_before_accept=before_accept)
    app = create_app(settings, source, options=options)

    async def drive() -> bool:
        inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        sent: list[dict[str, Any]] = []
        await inbox.put({"type": "lifespan.startup"})

        async def send(message: Any) -> None:
            sent.append(dict(message))
            if message["type"] == "lifespan.startup.complete":
                loaded.append(bool(app.holder.ready))
                await inbox.put({"type": "lifespan.shutdown"})

        loaded: list[bool] = []
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
        assert [m["type"] for m in sent] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
        return loaded[0]

    assert asyncio.run(drive()) is before_accept
