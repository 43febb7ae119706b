"""Two ``mamlctl serve --shard I/2`` processes behind Debian's nginx (``hash ... consistent``).

Oracles: real nginx for the ring (which backend it picks for 3000 ids equals
:meth:`Ring.owner`, through the config ``mamlctl shards nginx-conf`` prints); an unsharded
``mamlctl serve`` for the answers (every series through nginx gets the forecast and lineage the
single server gives); the seasonal-naive contract files for the forecast after a reload
(``forecast[h] = window[h + shift]``); the count of requests sent for "none dropped".
"""

from __future__ import annotations

import http.client
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from local_processes import Proc, free_port, mamlctl_argv, start, start_nginx, wait_http
from observe_fixtures import H, L, record_models

from mamlctl.serving.shards import SERIES_HEADER, Ring, nginx_conf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("nginx") is None,
        reason="nginx is not installed (CI installs Debian's: scripts/nginx-deps.sh)",
    ),
]

N_SERIES = 40
N_RING_IDS = 3000
HAMMER_MAX_REQUESTS = 4000
RELOAD_TIMEOUT_S = 60.0


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "MAMLCTL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    for name in ("PROMETHEUS_MULTIPROC_DIR", "MAMLCTL_SERVE_SHARD", "MAMLCTL_SERVE_SHARD_RING"):
        env.pop(name, None)
    return env


def _request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    sid: str | None = None,
) -> tuple[int, bytes]:
    headers: dict[str, str | bytes] = {"content-type": "application/json"}
    if sid is not None:
        headers[SERIES_HEADER] = sid.encode()  # UTF-8 (http.client would send Latin-1)
    data = None if body is None else orjson.dumps(body)
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def _nginx(fragment: str, root: Path, front: int, env: dict[str, str]) -> Proc:
    proc = start_nginx(fragment, root, env=env)
    wait_http(f"http://127.0.0.1:{front}/healthz", proc=proc, timeout_s=30)
    return proc


def test_the_ring_agrees_with_real_nginx(tmp_path: Path) -> None:
    """nginx, configured by :func:`nginx_conf`, in front of three nginx servers that answer
    their own port: the port it reaches for each id is the ring's owner's."""
    front, *backs = (free_port() for _ in range(4))
    ring = Ring.of([f"127.0.0.1:{port}" for port in backs])
    echo = "".join(
        f"server {{ listen 127.0.0.1:{port}; location / {{ return 200 $server_port; }} }}\n"
        for port in backs
    )
    fragment = nginx_conf(ring, listen=f"127.0.0.1:{front}", max_body_bytes=1 << 20) + echo
    proc = _nginx(fragment, tmp_path / "nginx", front, dict(os.environ))
    ids = [f"series-{i}" for i in range(N_RING_IDS)] + ["ü-ñ", "x" * 300, "a.b_c-d:e"]
    conn = http.client.HTTPConnection("127.0.0.1", front, timeout=10)
    try:
        wrong = []
        for k, sid in enumerate(ids):
            # most by the header; every tenth by the GET path (its id is plain ASCII), with a
            # sub-resource every twentieth
            by_path = k % 10 == 0 and sid.isascii()
            path = f"/v1/series/{sid}" + ("/anomalies" if k % 20 == 0 else "")
            path = path if by_path else "/v1/score"
            status, body = _request(conn, "GET", path, sid=None if by_path else sid)
            assert status == 200
            if int(body) != backs[ring.owner(sid)]:
                wrong.append(sid)
        assert wrong == [], f"nginx and the ring disagree on {len(wrong)} of {len(ids)} ids"
    finally:
        conn.close()
        proc.stop()


def _add_series(settings: Any, count: int) -> list[str]:
    """Series s6.. in family ``sines`` (the seeded registry holds s0..s5)."""
    from mamlctl.domain import Series
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.ingest import IncomingSeries, store_series

    rng = np.random.default_rng(17)
    ids = [f"s{i}" for i in range(6, 6 + count)]
    with open_registry(settings) as factory, factory.begin() as sess:
        store_series(
            sess,
            [
                IncomingSeries(
                    series=Series(series_id=sid, values=rng.normal(5.0, 1.0, 240)),
                    source="test",
                    interval_seconds=3600.0,
                )
                for sid in ids
            ],
        )
        q.assign_family(sess, "sines", ids)
    return ids


def _serve(env: dict[str, str], log_dir: Path, port: int, *extra: str) -> Proc:
    argv = mamlctl_argv("serve", "--port", str(port), "--reload-interval", "0.5s", *extra)
    return start(f"serve-{port}", argv, env=env, log_dir=log_dir)


def _ready(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        status, body = _request(conn, "GET", "/readyz")
    finally:
        conn.close()
    assert status == 200, body
    return dict(orjson.loads(body))


class _Hammer(threading.Thread):
    """Scores every series in turn through nginx (one keep-alive connection) until stopped or
    :data:`HAMMER_MAX_REQUESTS`; keeps every non-200 answer."""

    def __init__(self, port: int, items: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.port, self.items = port, items
        self.stop = threading.Event()
        self.sent = 0
        self.failures: list[tuple[str, int, bytes]] = []
        self.versions: dict[str, int] = {}

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self.stop.is_set() and self.sent < HAMMER_MAX_REQUESTS:
                item = self.items[self.sent % len(self.items)]
                sid = item["series_id"]
                try:
                    status, body = _request(conn, "POST", "/v1/score", item, sid=sid)
                except (OSError, http.client.HTTPException) as err:
                    status, body = 0, repr(err).encode()
                self.sent += 1
                if status != 200:
                    self.failures.append((sid, status, body[:300]))
                else:
                    self.versions[sid] = orjson.loads(body)["lineage"]["initializer_version"]
        finally:
            conn.close()


def test_two_shards_behind_nginx_answer_every_series_and_reload_without_a_drop(
    seeded_registry: Any, tmp_path: Path
) -> None:
    settings = seeded_registry.settings
    ids = [f"s{i}" for i in range(6)] + _add_series(settings, N_SERIES - 6)
    record_models(settings, ids)
    env = _env(settings.home)
    front, single, *shard_ports = (free_port() for _ in range(4))
    ring = Ring.of([f"127.0.0.1:{port}" for port in shard_ports])
    spec = ",".join(ring.servers)
    procs = [_serve(env, tmp_path, single)]
    procs += [
        _serve(env, tmp_path, port, "--shard", f"{i}/2", "--shard-ring", spec)
        for i, port in enumerate(shard_ports)
    ]
    try:
        for proc, port in zip(procs, [single, *shard_ports], strict=True):
            wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc)
        procs.append(_nginx(nginx_conf(ring, listen=f"127.0.0.1:{front}", max_body_bytes=1 << 20),
                            tmp_path / "nginx", front, env))  # fmt: skip
        # each shard loaded exactly its share: disjoint, and together every series
        shares = []
        for i, (proc, port) in enumerate(zip(procs[1:3], shard_ports, strict=True)):
            ready = _ready(port)
            mine = {sid for sid in ids if ring.owner(sid) == i}
            assert ready["shard"] == f"{i}/2" and ready["series"] == len(mine)
            assert f"shard {i}/2 (127.0.0.1:{port} in the ring)" in proc.log_tail()
            assert f"{len(mine)} of the registry's {N_SERIES} current models" in proc.log_tail()
            shares.append(mine)
        assert not shares[0] & shares[1] and shares[0] | shares[1] == set(ids)
        assert 0 < len(shares[0]) < N_SERIES

        # every series through nginx answers what the single server answers
        rng = np.random.default_rng(5)
        items = [
            {"series_id": sid, "window": [float(v) for v in rng.normal(5.0, 1.0, L)]} for sid in ids
        ]
        via = http.client.HTTPConnection("127.0.0.1", front, timeout=30)
        alone = http.client.HTTPConnection("127.0.0.1", single, timeout=30)
        try:
            for item in items:
                sid = item["series_id"]
                status, body = _request(via, "POST", "/v1/score", item, sid=sid)
                assert status == 200, body
                got = orjson.loads(body)
                ref = orjson.loads(_request(alone, "POST", "/v1/score", item)[1])
                assert got["forecast"] == ref["forecast"] and got["sigma"] == ref["sigma"]
                assert got["lineage"]["model_sha256"] == ref["lineage"]["model_sha256"]
                # GET by path routes by the id too
                status, body = _request(via, "GET", f"/v1/series/{sid}")
                assert status == 200 and orjson.loads(body)["series_id"] == sid
        finally:
            via.close()
            alone.close()

        # a reload while a client hammers through nginx: shard 0's series get new models
        hammer = _Hammer(front, items)
        hammer.start()
        before = [_ready(port)["generation"] for port in shard_ports]
        time.sleep(0.5)
        record_models(settings, sorted(shares[0]), version=2, lag_shift=1)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while time.monotonic() < deadline and _ready(shard_ports[0])["generation"] == before[0]:
            time.sleep(0.1)
        assert _ready(shard_ports[0])["generation"] > before[0], procs[1].log_tail()
        time.sleep(1.0)  # a second of requests on the new generation
        hammer.stop.set()
        hammer.join(timeout=60)
        assert not hammer.is_alive()
        assert hammer.failures == [], hammer.failures[:5]
        assert hammer.sent >= 2 * N_SERIES, hammer.sent
        assert {sid for sid, v in hammer.versions.items() if v == 2} == shares[0]

        # after the reload, shard 0's series run the new file: forecast[h] = window[h + 1]
        via = http.client.HTTPConnection("127.0.0.1", front, timeout=30)
        try:
            for item in items:
                sid = item["series_id"]
                got = orjson.loads(_request(via, "POST", "/v1/score", item, sid=sid)[1])
                shift = 1 if sid in shares[0] else 0
                expected = np.float32(item["window"])[shift : shift + H]
                assert np.array_equal(np.float32(got["forecast"]), expected), sid
        finally:
            via.close()
    finally:
        for proc in reversed(procs):
            proc.stop()
