"""The real ``mamlctl serve`` process: Prometheus counts add up over ``--workers 2``; the
startup line; MLflow's scoring protocol.

Oracle: the number of requests this test sent (N): the request counter of ``/metrics`` equals
N on every scrape, whichever worker answers it, and counts from 0 at each start. The startup
line names the address and the registry's series and families, once per server (workers
included). ``/invocations`` forecasts what ``/v1/score`` forecasts for the same window.
"""

from __future__ import annotations

import json
import os
import re
import time
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


def _startup_lines(proc: Proc, port: int, *, timeout_s: float = 30.0) -> list[str]:
    """The startup lines in the server's log, once one is there (the models are loaded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = proc.log_path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith("mamlctl serve: ")]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


STARTUP = re.compile(
    r"mamlctl serve: http://127\.0\.0\.1:(\d+)  (\d+) series, (\d+) family"
    r" loaded in \d+\.\d\ds"
)


def test_startup_line_and_the_mlflow_protocol(seeded_registry: Any, tmp_path: Path) -> None:
    settings = seeded_registry.settings
    record_models(settings, ["s0", "s1", "s2"])
    window = [float(v) for v in np.asarray(seeded_registry.values["s0"])[-L:]]
    port = free_port()
    proc = _serve(settings.home, tmp_path, port)
    try:
        lines = _startup_lines(proc, port)
        assert len(lines) == 1, proc.log_tail()
        match = STARTUP.fullmatch(lines[0])
        assert match and match.groups() == (str(port), "3", "1"), lines[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=30) as response:
            assert response.status == 200
        want = _post(port, "/v1/score", {"series_id": "s0", "window": window})["forecast"]
        frame = {"columns": ["unique_id", "y"], "data": [["s0", v] for v in window]}
        got = _post(port, "/invocations", {"dataframe_split": frame})["predictions"]
        assert [row["yhat"] for row in got] == want
    finally:
        proc.stop()


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
        time.sleep(0.5)  # the other worker has loaded too (both answered): one line still
        lines = _startup_lines(proc, port)
        assert len(lines) == 1 and STARTUP.fullmatch(lines[0]), proc.log_tail()
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


def test_open_inference_protocol_with_the_triton_client(
    seeded_registry: Any, tmp_path: Path
) -> None:
    """``/v2`` through ``tritonclient.http`` (JSON and binary tensors) equals ``/v1/score``."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    settings = seeded_registry.settings
    ids = ["s0", "s1", "s2"]
    record_models(settings, ids)
    values = seeded_registry.values
    windows = np.stack(
        [
            np.asarray(values[s])[-L - k : len(values[s]) - k]
            for s, k in zip(ids, (0, 3, 7), strict=True)
        ]
    ).astype(np.float32)
    port = free_port()
    proc = _serve(settings.home, tmp_path, port)
    try:
        v1 = _post(
            port,
            "/v1/score",
            {
                "items": [
                    {"series_id": s, "window": w.tolist()}
                    for s, w in zip(ids, windows, strict=True)
                ]
            },
        )["results"]
        want_f = np.array([r["forecast"] for r in v1], dtype=np.float32)
        want_s = np.array([r["sigma"] for r in v1], dtype=np.float32)

        client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_server_ready()
        for name in ("sines", "maml-sines"):
            assert client.is_model_ready(name)
            meta = client.get_model_metadata(name)
            assert meta["inputs"] == [
                {"name": "window", "datatype": "FP32", "shape": [-1, L]},
                {"name": "series_id", "datatype": "BYTES", "shape": [-1]},
            ]
            assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
                ("forecast", "FP32", [-1, 6]),
                ("sigma", "FP32", [-1, 6]),
            ]
        for binary in (False, True):
            window = triton.InferInput("window", list(windows.shape), "FP32")
            window.set_data_from_numpy(windows, binary_data=binary)
            series = triton.InferInput("series_id", [len(ids)], "BYTES")
            series.set_data_from_numpy(np.array(ids, dtype=np.object_), binary_data=binary)
            outputs = [
                triton.InferRequestedOutput(o, binary_data=binary) for o in ("forecast", "sigma")
            ]
            result = client.infer("maml-sines", [window, series], outputs=outputs)
            assert np.array_equal(result.as_numpy("forecast"), want_f)
            assert np.array_equal(result.as_numpy("sigma"), want_s)
        # one series for every row, named by a request parameter
        window = triton.InferInput("window", [1, L], "FP32")
        window.set_data_from_numpy(windows[1:2])
        result = client.infer("sines", [window], parameters={"series_id": "s1"})
        assert np.array_equal(result.as_numpy("forecast"), want_f[1:2])
        # errors: OIP's {"error": ...} with a 4xx status
        bad = triton.InferInput("window", [1, L - 1], "FP32")
        bad.set_data_from_numpy(windows[:1, 1:])
        for model, inputs, params, fragment in (
            ("nope", [window], {"series_id": "s1"}, "unknown model"),
            ("sines", [window], {"series_id": "zz"}, "'zz' is not served"),
            ("sines", [bad], {"series_id": "s1"}, "expected 24"),
            ("sines", [window], None, "name the series"),
        ):
            try:
                client.infer(model, inputs, parameters=params)
            except InferenceServerException as err:
                assert fragment in err.message(), err.message()
                assert err.status() in ("400", "404"), err.status()
            else:
                raise AssertionError(f"{model} {params} did not fail")
    finally:
        proc.stop()
