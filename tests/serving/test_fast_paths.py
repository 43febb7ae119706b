"""The performance paths against their references.

* Binary batch format: every number equals the JSON answer to the same batch (which the other
  tests hold to each series' own ONNX file), errors equal the JSON path's classes and ``loc``.
* HTTP fast path (:class:`ScoreHttpProtocol` under uvicorn on loopback): byte-identical bodies
  to the ASGI path of the same app, keep-alive, pipelining, HTTP/1.0, 413, 401.
* Head-only banks: :class:`BankBuilder` keeps numbers equal in every file as constants (no
  stack) and the bank still matches each file in onnxruntime.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
import orjson
import pytest
import uvicorn
from conftest import Served
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_models import Spec, make_model_bytes

from mamlctl.serving import bank as bk
from mamlctl.serving.app import ScoringApp, ServeOptions
from mamlctl.serving.binary import decode_response, encode_request
from mamlctl.serving.fastpath import ScoreHttpProtocol
from mamlctl.serving.runtime import BankRuntime, make_session

BIN = {"Content-Type": "application/octet-stream"}


def _windows(served: Served, ids: list[str], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for sid in ids:
        rec = served.record(sid)
        loc, scale = float(rec.metadata["loc"]), float(rec.metadata["scale"])
        rows.append(rng.normal(loc, scale, rec.window))
    return np.array(rows, dtype=np.float32)


# ----------------------------------------------------------------------------- binary format


@pytest.mark.parametrize("with_actual", [False, True])
def test_binary_batch_equals_the_json_batch(served: Served, with_actual: bool) -> None:
    ids = ["m3", "m0", "m3", "m4", "m1", "m2", "m0"]
    windows = _windows(served, ids, seed=4)
    actual = None
    if with_actual:
        actual = windows[:, -2:].astype(np.float64) + np.array([0.25, -30.0])
    items: list[dict[str, Any]] = []
    for i, sid in enumerate(ids):
        item: dict[str, Any] = {"series_id": sid, "window": windows[i].tolist()}
        if actual is not None:
            item["actual"] = actual[i].tolist()
        items.append(item)
    js = served.client.post("/v1/score", json={"items": items})
    assert js.status_code == 200
    results = js.json()["results"]
    r = served.client.post("/v1/score", content=encode_request(ids, windows, actual), headers=BIN)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    got = decode_response(r.content)
    f32 = np.float32
    assert np.array_equal(got["forecast"], np.array([x["forecast"] for x in results], f32))
    assert np.array_equal(got["sigma"], np.array([x["sigma"] for x in results], f32))
    meta = got["meta"]
    assert meta["generation"] == results[0]["lineage"]["generation"]
    assert [s["series_id"] for s in meta["series"]] == ["m3", "m0", "m4", "m1", "m2"]
    for i, res in enumerate(results):
        described = meta["series"][got["series_index"][i]]
        assert described["series_id"] == res["series_id"]
        assert described["lineage"] == res["lineage"]
        assert described["threshold"] == res["threshold"]
    if actual is None:
        assert got["residual"] is None and got["anomaly_score"] is None
    else:
        assert got["residual"].tolist() == [x["residual"] for x in results]
        assert got["anomaly_score"].tolist() == [x["anomaly_score"] for x in results]
        assert got["is_anomaly"].tolist() == [x["is_anomaly"] for x in results]
        assert got["is_anomaly"].any() and not got["is_anomaly"].all()  # both classes met


def _raw(ids: list[str], width: int = 12, n_actual: int = 0) -> bytearray:
    windows = np.zeros((len(ids), width), dtype=np.float32)
    actual = np.zeros((len(ids), n_actual)) if n_actual else None
    return bytearray(encode_request(ids, windows, actual))


def _nan_at(body: bytearray, row: int, col: int, n_ids_bytes: int) -> bytes:
    start = 20 + n_ids_bytes
    start += -start % 8
    offset = start + (row * 12 + col) * 4
    body[offset : offset + 4] = np.array([np.nan], dtype="<f4").tobytes()
    return bytes(body)


IT = ["body", "items"]
NAN = "finite_number"
BAD_BINARY: list[tuple[str, Callable[[], bytes], int, list[Any], str]] = [
    ("short", lambda: b"MLB1", 422, ["body"], "binary_header"),
    ("magic", lambda: b"XXXX" + bytes(_raw(["m0"]))[4:], 422, ["body"], "binary_header"),
    ("empty", lambda: encode_request([], np.zeros((0, 12))), 422, IT, "too_short"),
    ("truncated", lambda: bytes(_raw(["m0", "m1"]))[:-4], 422, ["body"], "binary_length"),
    ("utf8", lambda: bytes(_raw(["m0"]).replace(b"m0", b"\xff\xfe")), 422, ["body", "ids"], "string_type"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize("name,make,status,loc,kind", BAD_BINARY, ids=[b[0] for b in BAD_BINARY])
def test_bad_binary_bodies_are_4xx_naming_the_field(
    served: Served, name: str, make: Callable[[], bytes], status: int, loc: list[Any], kind: str
) -> None:
    r = served.client.post("/v1/score", content=make(), headers=BIN)
    assert r.status_code == status, r.text
    detail = r.json()["detail"][0]
    assert detail["type"] == kind
    assert detail["loc"][: len(loc)] == loc


PER_ROW: list[tuple[str, Callable[[], bytes], int, int, list[Any], str]] = [
    ("unknown", lambda: bytes(_raw(["m0", "zz"])), 1, 404, [*IT, 1, "series_id"], "not_found"),
    ("width", lambda: bytes(_raw(["m0"], width=11)), 0, 422, [*IT, 0, "window"], "window_length"),
    ("actual", lambda: bytes(_raw(["m0"], n_actual=5)), 0, 422, [*IT, 0, "actual"], "actual_length"),  # noqa: E501
    ("nan", lambda: _nan_at(_raw(["m0", "m1"]), 1, 7, 5), 1, 422, [*IT, 1, "window", 7], NAN),
    ("mixed", lambda: encode_request(["m0", "c0"], np.zeros((2, 12))), 1, 422, [*IT, 1, "window"], "window_length"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize("name,make,row,status,loc,kind", PER_ROW, ids=[p[0] for p in PER_ROW])
def test_a_bad_binary_row_is_answered_in_its_place(
    served: Served,
    name: str,
    make: Callable[[], bytes],
    row: int,
    status: int,
    loc: list[Any],
    kind: str,
) -> None:
    r = served.client.post("/v1/score", content=make(), headers=BIN)
    assert r.status_code == 200, r.text
    got = decode_response(r.content)
    (error,) = got["meta"]["errors"]
    assert error["row"] == row and error["error"]["type"] == kind
    assert error["error"]["loc"] == loc and got["status"][row] == status
    assert got["series_index"][row] == 0xFFFFFFFF
    assert np.isnan(got["forecast"][row]).all() and np.isnan(got["sigma"][row]).all()


def test_a_binary_batch_with_bad_rows_scores_the_others_as_alone(served: Served) -> None:
    """Oracle: the binary batch of only the valid rows (array_equal, every block)."""
    ids = ["m0", "zz", "m1", "m2", "m3", "m4", "m1"]
    windows = _windows(served, ids[:1] + ids[2:], seed=5)
    windows = np.insert(windows, 1, np.zeros(12, np.float32), axis=0)
    windows[3, 4] = np.inf  # m2: a non-finite window value
    actual = windows[:, -2:].astype(np.float64) + np.array([0.25, -30.0])
    actual[5, 1] = 1e39  # m4: an actual value beyond float32
    r = served.client.post("/v1/score", content=encode_request(ids, windows, actual), headers=BIN)
    assert r.status_code == 200, r.text
    got = decode_response(r.content)
    valid = [0, 2, 4, 6]
    alone_r = served.client.post(
        "/v1/score",
        content=encode_request([ids[i] for i in valid], windows[valid], actual[valid]),
        headers=BIN,
    )
    alone = decode_response(alone_r.content)
    for name in ("forecast", "sigma", "residual", "anomaly_score", "is_anomaly"):
        assert np.array_equal(got[name][valid], alone[name]), name
    failed = [1, 3, 5]
    assert got["status"].tolist() == [200, 404, 200, 422, 200, 422, 200]
    assert (got["series_index"][failed] == 0xFFFFFFFF).all()
    for name in ("forecast", "sigma", "residual", "anomaly_score"):
        assert np.isnan(got[name][failed]).all(), name
    assert not got["is_anomaly"][failed].any()
    described = [got["meta"]["series"][k]["series_id"] for k in got["series_index"][valid]]
    assert described == [ids[i] for i in valid]
    locs = [e["error"]["loc"] for e in got["meta"]["errors"]]
    assert locs == [[*IT, 1, "series_id"], [*IT, 3, "window", 4], [*IT, 5, "actual", 1]]
    assert "errors" not in alone["meta"]  # all-valid batches: the layout without errors
    assert alone_r.content == _documented_layout(served, alone_r.content)


def _documented_layout(served: Served, body: bytes) -> bytes:
    """An all-valid response re-encoded from its decoded parts by the layout the format had
    before per-row errors (oracle: the docstring's table)."""
    import struct

    got = decode_response(body)
    meta = got["meta"]
    meta_bytes = b'{"generation":%d,"series":[%s]}' % (
        meta["generation"],
        b",".join(orjson.dumps(m) for m in meta["series"]),
    )
    n, horizon = got["forecast"].shape
    n_actual = 0 if got["residual"] is None else got["residual"].shape[1]
    head = struct.pack("<4sIIII", b"MLR1", n, horizon, n_actual, len(meta_bytes))
    parts = [head, meta_bytes, b"\0" * (-(len(head) + len(meta_bytes)) % 8)]
    parts += [got["series_index"].astype("<u4").tobytes(), b"\0" * (-(4 * n) % 8)]
    parts += [got["forecast"].tobytes(), got["sigma"].tobytes()]
    if n_actual:
        parts += [got["residual"].tobytes(), got["anomaly_score"].tobytes()]
        parts.append(got["is_anomaly"].astype(np.uint8).tobytes())
    return b"".join(parts)


def test_binary_batch_limits(make_served: Callable[..., Served]) -> None:
    s = make_served(options=ServeOptions(reload=False, max_batch=3))
    r = s.client.post("/v1/score", content=bytes(_raw(["m0"] * 4)), headers=BIN)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "too_long"
    assert s.client.post("/v1/score", content=bytes(_raw(["m0"] * 3)), headers=BIN).is_success


# ----------------------------------------------------------------------------- HTTP fast path


@pytest.fixture
def live(make_served: Callable[..., Served]) -> Iterator[tuple[Served, int]]:
    yield from _live(make_served, max_body_bytes=4096)


@pytest.fixture
def live_large(make_served: Callable[..., Served]) -> Iterator[tuple[Served, int]]:
    yield from _live(make_served, max_body_bytes=1 << 20)


def _live(make_served: Callable[..., Served], max_body_bytes: int) -> Iterator[tuple[Served, int]]:
    options = ServeOptions(reload=False, max_body_bytes=max_body_bytes)
    s = make_served(token="t0k", options=options)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        s.app, host="127.0.0.1", port=port, http=ScoreHttpProtocol, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield s, port
    server.should_exit = True
    thread.join(timeout=10)


def _exchange(port: int, raw: bytes, responses: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``raw`` on one connection and read ``responses`` HTTP responses back."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        buf = b""
        while len(out) < responses:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                assert chunk, "connection closed early"
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            pairs = (line.split(": ", 1) for line in lines[1:])
            headers = {name.lower(): value for name, value in pairs}
            length = int(headers["content-length"])
            while len(buf) < length:
                buf += sock.recv(65536)
            out.append((int(lines[0].split()[1]), headers, buf[:length]))
            buf = buf[length:]
    return out


def _post(body: bytes, *, token: str = "t0k", version: str = "1.1", ctype: str = "json") -> bytes:
    ct = "application/octet-stream" if ctype == "bin" else "application/json"
    return (
        f"POST /v1/score HTTP/{version}\r\nHost: t\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {ct}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_fast_path_answers_byte_identical_to_the_asgi_path(
    live: tuple[Served, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, port = live
    window = _windows(s, ["m1"], seed=9)[0].tolist()
    single = orjson.dumps({"series_id": "m1", "window": window, "actual": [window[-1]]})
    batch = encode_request(["m0", "m2"], _windows(s, ["m0", "m2"], seed=2))
    bad = orjson.dumps({"series_id": "m1", "window": window[:3]})
    get = b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n"
    asgi_calls: list[str] = []
    original = ScoringApp.__call__

    async def counted(self: ScoringApp, scope: Any, receive: Any, send: Any) -> None:
        asgi_calls.append(scope.get("path", ""))
        await original(self, scope, receive, send)

    monkeypatch.setattr(ScoringApp, "__call__", counted)
    # one connection, pipelined: fast, fast binary, fast 422, wrong token, 413, ASGI (GET)
    raw = b"".join(
        [
            _post(single),
            _post(batch, ctype="bin"),
            _post(bad),
            _post(single, token="nope"),
            _post(b"x" * 5000),
            get,
        ]
    )
    answers = _exchange(port, raw, 6)
    assert [a[0] for a in answers] == [200, 200, 422, 401, 413, 200]
    assert asgi_calls == ["/readyz"]  # every POST answered by the fast path
    monkeypatch.undo()
    asgi = s.client  # the same app through the plain ASGI path
    assert answers[0][2] == asgi.post("/v1/score", content=single).content
    ref = asgi.post("/v1/score", content=batch, headers=BIN)
    assert answers[1][2] == ref.content and answers[1][1]["content-type"] == BIN["Content-Type"]
    assert answers[2][2] == asgi.post("/v1/score", content=bad).content
    assert answers[3][1]["www-authenticate"] == "Bearer"
    assert orjson.loads(answers[4][2])["detail"][0]["type"] == "too_large"
    assert orjson.loads(answers[5][2])["status"] == "ready"
    metrics = asgi.get("/metrics").text
    assert 'mamlctl_requests_total{endpoint="/v1/score",status="200"} 4.0' in metrics


def test_fast_path_http_10_closes_and_keep_alive_reuses(live: tuple[Served, int]) -> None:
    s, port = live
    body = orjson.dumps({"series_id": "m0", "window": [1.0] * 12})
    ((status, _, payload),) = _exchange(port, _post(body, version="1.0"), 1)
    assert status == 200 and orjson.loads(payload)["series_id"] == "m0"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for _ in range(3):  # keep-alive: three requests, one connection
            sock.sendall(_post(body))
            data = sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200 OK")
    # after each answer the loop polled (default 100 us window) instead of sleeping at once
    assert s.app.busy_poll.window == 100e-6 and s.app.busy_poll.spins > 0


def test_large_batches_are_scored_off_the_event_loop(
    live_large: tuple[Served, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body of OFFLOAD_BODY_BYTES or more is scored on a worker thread: while it is held
    there, another connection is answered; pipelined on one connection, answers keep their
    order; the large answer is byte-identical to the in-process one."""
    from mamlctl.serving import app as app_module
    from mamlctl.serving.limits import OFFLOAD_BODY_BYTES

    s, port = live_large
    ids = [f"m{i % 5}" for i in range(400)]
    large = encode_request(ids, _windows(s, ids, seed=6))
    assert len(large) >= OFFLOAD_BODY_BYTES
    small = orjson.dumps({"series_id": "m1", "window": _windows(s, ["m1"], seed=1)[0].tolist()})
    release, entered = threading.Event(), threading.Event()
    threads: list[str] = []
    original = app_module.score_binary

    def held(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        entered.set()
        release.wait(10)
        return original(*args, **kwargs)

    monkeypatch.setattr(app_module, "score_binary", held)
    answers: list[Any] = []
    sender = threading.Thread(
        target=lambda: answers.extend(_exchange(port, _post(large, ctype="bin") + _post(small), 2))
    )
    sender.start()
    assert entered.wait(10)
    ((status, _, body),) = _exchange(port, _post(small), 1)  # another connection, meanwhile
    assert status == 200 and orjson.loads(body)["series_id"] == "m1"
    release.set()
    sender.join(10)
    assert [a[0] for a in answers] == [200, 200]  # in request order on the one connection
    assert threads == ["score_0"]  # the worker pool's thread, not the loop's
    monkeypatch.undo()
    ref = s.client.post("/v1/score", content=large, headers=BIN)
    assert answers[0][2] == ref.content
    assert answers[1][2] == body


# ----------------------------------------------------------------------------- head-only banks


def test_builder_keeps_numbers_equal_in_every_file_as_constants() -> None:
    spec = Spec(kind="mlp", head="gaussian", window=20, horizon=5, hidden=16)
    blobs, infos = [], []
    for i in range(6):
        blob, info = make_model_bytes(spec, series_id=f"s{i}", seed=50 + i)
        blobs.append(blob)
        infos.append(info)
    body = {"core.layers.0.weight", "core.layers.0.bias"}  # adapted head-only: body shared
    first = onnx.load_from_string(blobs[0])
    shared = {i.name: i for i in first.graph.initializer if i.name in body}
    models = []
    for blob in blobs:
        model = onnx.load_from_string(blob)
        for init in model.graph.initializer:
            if init.name in shared:
                init.CopyFrom(shared[init.name])
        models.append(bk.normalise_constants(model))
    builder = bk.BankBuilder(bk.template_of(models[0]), capacity=10)
    for model in models:
        builder.add(model)
    assert not body & set(builder.stacks)  # never stacked
    assert {"core.layers.1.weight", "core.layers.1.bias"} <= set(builder.stacks)
    graph = builder.build()
    assert not any(name.removeprefix("bank.").startswith("core.layers.0") for name in graph.banks)
    runtime = BankRuntime.from_bank(graph)
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 6, size=40)
    loc = np.array([infos[r]["loc"] for r in rows])[:, None]
    scale = np.array([infos[r]["scale"] for r in rows])[:, None]
    windows = (loc + scale * rng.normal(size=(40, 20))).astype(np.float32)
    forecast, sigma = runtime.run(windows, rows)
    for i, model in enumerate(models):
        ref_f, ref_s = make_session(model.SerializeToString()).run(
            None, {"window": windows[rows == i]}
        )
        tol = 1e-6 * infos[i]["scale"]
        assert (np.abs(forecast[rows == i] - ref_f) <= tol + 4 * np.spacing(np.abs(ref_f))).all()
        assert (np.abs(sigma[rows == i] - ref_s) <= tol + 4 * np.spacing(np.abs(ref_s))).all()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    picks=st.lists(
        st.sampled_from(["m0", "m1", "m2", "m3", "m4", "c0", "zz"]), min_size=1, max_size=24
    ),
    n_actual=st.integers(0, 3),
    nan_row=st.one_of(st.none(), st.integers(0, 23)),
    seed=st.integers(0, 2**16),
)
def test_the_all_valid_fast_decode_answers_as_the_per_row_checks(
    served: Served, picks: list[str], n_actual: int, nan_row: int | None, seed: int
) -> None:
    """Oracle: the same body scored with the batch-wide fast path switched off (every row
    through ``_check_row``): byte-identical responses, whatever mix of valid rows, unknown
    series, other window lengths (the conv family) and non-finite values."""
    from mamlctl.serving import binary

    rng = np.random.default_rng(seed)
    windows = rng.normal(0, 3, (len(picks), 12)).astype(np.float32)
    if nan_row is not None and nan_row < len(picks):
        windows[nan_row, nan_row % 12] = np.nan
    actual = rng.normal(0, 3, (len(picks), n_actual)) if n_actual else None
    body = encode_request(picks, windows, actual)
    state = served.app.holder.state
    try:
        fast = binary.score_binary(state, body, max_batch=4096)
    except binary.ClientError as err:
        fast = err.body()
    original = binary._all_servable
    binary._all_servable = lambda *_: False  # type: ignore[assignment]
    try:
        slow = binary.score_binary(state, body, max_batch=4096)
    except binary.ClientError as err:
        slow = err.body()
    finally:
        binary._all_servable = original  # type: ignore[assignment]
    assert fast == slow
