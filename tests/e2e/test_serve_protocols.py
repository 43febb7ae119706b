"""The real ``mamlctl serve`` process: Prometheus counts add up over ``--workers 2``.

Oracle: the number of requests this test sent (N): the request counter of ``/metrics`` equals
N on every scrape, whichever worker answers it, and counts from 0 at each start.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from local_processes import Proc, free_port, mamlctl_argv, start, wait_http
from observe_fixtures import L, record_models

N_REQUESTS = 40


def _serve(home: Path, tmp_path: Path, port: int, *extra: str) -> Proc:
    env = {**os.environ, "MAMLCTL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = mamlctl_argv("serve", "--port", str(port), "--reload-interval", "1s", *extra)
    proc = start(f"serve-{port}", argv, env=env, log_dir=tmp_path)
    wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc)
    return proc


def _post(port: int, path: str, doc: Any) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(doc).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return str(response.read().decode())


def _sample(text: str, name: str, labels: str = "") -> float | None:
    pattern = re.escape(name) + (r"\{" + labels + r"\}" if labels else "") + r" (\S+)$"
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.group(1))
    return None


def test_workers_counters_add_up_on_every_scrape(seeded_registry: Any, tmp_path: Path) -> None:
    settings = seeded_registry.settings
    record_models(settings, ["s0", "s1"])
    window = [float(v) for v in np.asarray(seeded_registry.values["s0"])[-L:]]
    port = free_port()
    proc = _serve(settings.home, tmp_path, port, "--workers", "2")
    try:
        for i in range(N_REQUESTS):
            sid = ("s0", "s1")[i % 2]
            answer = _post(port, "/v1/score", {"series_id": sid, "window": window})
            assert answer["series_id"] == sid
        ok = r'endpoint="/v1/score",status="200"'
        for _ in range(8):  # each scrape may reach either worker
            text = _scrape(port)
            assert _sample(text, "mamlctl_requests_total", ok) == N_REQUESTS, text
            assert _sample(text, "mamlctl_scored_rows_total") == N_REQUESTS
            assert _sample(text, "mamlctl_request_seconds_count", r'endpoint="/v1/score"') == (
                N_REQUESTS
            )
            assert _sample(text, "mamlctl_model_info", r'family="sines",version="1"') == 1.0
            assert _sample(text, "mamlctl_models_loaded") == 2.0
            assert _sample(text, "process_resident_memory_bytes") is not None
    finally:
        proc.stop()
    # a restart counts from 0 (the multiprocess folder is fresh)
    port = free_port()
    proc = _serve(settings.home, tmp_path, port, "--workers", "2")
    try:
        text = _scrape(port)
        assert _sample(text, "mamlctl_requests_total", r'endpoint="/v1/score",status="200"') in (
            None,
            0.0,
        )
    finally:
        proc.stop()
