"""Durability of ``POST /v1/observe`` through the real ``mamlctl serve`` process: observations
acknowledged before a SIGKILL are all in the registry, and the restarted server continues from
the same window (the same forecast and flags as an uninterrupted run: the detector module run
offline on the whole stream with the model file in onnxruntime)."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from local_processes import Proc, free_port, mamlctl_argv, start, wait_http
from observe_fixtures import L, offline_start, onnx_forecaster, record_models, stored_series

from mamlctl.timeseries.stream_detector import run_stream


def _serve(home: Path, tmp_path: Path, port: int, name: str) -> Proc:
    env = {**os.environ, "MAMLCTL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    # the z rule: its flag at the injected value is the oracle here (serve's default is rank)
    argv = mamlctl_argv("serve", "--port", str(port), "--reload-interval", "1s", "--flag", "z")
    proc = start(name, argv, env=env, log_dir=tmp_path)
    wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc)
    return proc


def _post(port: int, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/observe",
        data=json.dumps({"items": items}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return list(json.loads(response.read())["results"])


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def test_sigkill_after_the_answer_loses_nothing_and_the_restart_continues(  # type: ignore[no-untyped-def]
    seeded_registry, tmp_path
) -> None:
    settings = seeded_registry.settings
    paths = record_models(settings, ["s0"])
    seeded = seeded_registry.values["s0"]
    t = np.arange(240, 276)
    stream = 5.0 + np.sin(2 * np.pi * t / 24) + 0.05 * np.random.default_rng(5).normal(size=36)
    stream[29] += 3.0  # flagged in the last acknowledged request: its record must survive too
    items = [
        {"series_id": "s0", "timestamp": 240 + k, "value": float(v)} for k, v in enumerate(stream)
    ]
    port = free_port()
    proc = _serve(settings.home, tmp_path, port, "serve-1")
    try:
        acked = _post(port, items[:10]) + _post(port, items[10:20]) + _post(port, items[20:30])
    finally:
        os.killpg(proc.process.pid, signal.SIGKILL)  # right after the answer
        proc.process.wait(timeout=15)
    assert [a["status"] for a in acked] == ["scored"] * 30

    # every acknowledged point and record is in the registry
    assert np.array_equal(stored_series(settings, "s0").values, np.r_[seeded, stream[:30]])
    start, scale = offline_start(paths["s0"], np.asarray(seeded), L)
    offline = run_stream(
        start,
        stream,
        onnx_forecaster(paths["s0"]),
        z_threshold=acked[0]["threshold_z"],
        scale=scale,
    )[1]
    assert [a["forecast"] for a in acked] == [v.forecast for v in offline[:30]]

    port = free_port()
    proc = _serve(settings.home, tmp_path, port, "serve-2")
    try:
        records = _get(port, "/v1/series/s0/anomalies")["anomalies"]
        assert [r["position"] for r in records] == [269]
        assert records[0]["id"] == acked[29]["anomaly_id"]
        rest = _post(port, items[30:])
        again = _post(port, items[29:30])  # a duplicate across the restart
    finally:
        proc.stop()
    assert [a["forecast"] for a in rest] == [v.forecast for v in offline[30:]]
    assert [a["is_anomaly"] for a in rest] == [v.is_anomaly for v in offline[30:]] == [False] * 6
    # the ranking state was committed with the acknowledged points: the scores continue
    assert [a["rank_score"] for a in acked + rest] == [v.rank_score for v in offline]
    assert again[0]["status"] == "duplicate" and again[0]["value"] == items[29]["value"]
    assert len(stored_series(settings, "s0").values) == 240 + 36
