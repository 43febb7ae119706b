"""Every endpoint, every bad-input class, auth on and off, metrics, OpenAPI, integrity.

Oracles: each series' own ONNX file run by onnxruntime (forecast, sigma; tolerance as in
test_bank), :mod:`mamlctl.timeseries.anomaly` on the served forecast (anomaly score, flag), the
registry records (lineage, threshold).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from conftest import CONV, MLP, Client, Served
from serving_models import Spec, write_series

from mamlctl.serving import schemas
from mamlctl.serving.app import ServeOptions
from mamlctl.serving.runtime import make_session
from mamlctl.timeseries.anomaly import anomaly_score


def _window(served: Served, sid: str, seed: int = 0) -> list[float]:
    rec = served.record(sid)
    loc, scale = float(rec.metadata["loc"]), float(rec.metadata["scale"])
    rng = np.random.default_rng(seed)  # around the series' level, as real windows are
    return [float(v) for v in (rng.normal(loc, scale, rec.window)).astype(np.float32)]


def _offline(served: Served, sid: str, window: list[float]) -> tuple[np.ndarray, np.ndarray]:
    session = make_session(served.file(sid))
    f, s = session.run(None, {"window": np.array([window], dtype=np.float32)})
    return f[0], s[0]


def _close(got: list[float], ref: np.ndarray, scale: float) -> bool:
    g = np.array(got, dtype=np.float32)
    return bool((np.abs(g - ref) <= 1e-6 * scale + 4 * np.spacing(np.abs(ref))).all())


# ----------------------------------------------------------------------------- endpoints


def test_health_and_readiness(make_served: Callable[..., Served]) -> None:
    s = make_served(load=False)
    assert s.client.get("/healthz").json() == {"status": "ok"}
    assert s.client.get("/readyz").status_code == 503
    r = s.client.post("/v1/score", json={"series_id": "m0", "window": [0.0] * 12})
    assert r.status_code == 503 and r.json()["detail"][0]["type"] == "not_ready"
    assert s.app.holder.reload(force=True)
    ready = s.client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["series"] == 8
    assert ready["bank_groups"] == 2 and ready["session_groups"] == 0
    schemas.Ready.model_validate(ready)


def test_score_one_item_equals_the_offline_model(served: Served) -> None:
    window = _window(served, "m2")
    actual = [window[-1] + 0.5, window[-1] - 40.0]
    r = served.client.post(
        "/v1/score", json={"series_id": "m2", "window": window, "actual": actual}
    )
    assert r.status_code == 200
    body = r.json()
    schemas.ScoreResult.model_validate(body)
    ref_f, ref_s = _offline(served, "m2", window)
    rec = served.record("m2")
    assert _close(body["forecast"], ref_f, float(rec.metadata["scale"]))
    assert np.array_equal(np.array(body["sigma"], dtype=np.float32), ref_s)  # elementwise: exact
    forecast = np.array(body["forecast"], dtype=np.float32).astype(np.float64)
    residual = np.array(actual) - forecast[:2]
    assert body["residual"] == pytest.approx(residual.tolist(), abs=0, rel=0)
    expected = anomaly_score(residual, np.array(body["sigma"][:2], dtype=np.float32))
    assert body["anomaly_score"] == expected.tolist()
    assert body["is_anomaly"] == [bool(v >= rec.threshold) for v in expected]
    assert body["is_anomaly"][1] is True  # 40 below the forecast with sigma ~ scale
    assert body["threshold"] == rec.threshold
    lineage = body["lineage"]
    assert lineage["registered_model"] == rec.registered_model == "maml-hourly"
    assert lineage["initializer_version"] == rec.initializer_version
    assert lineage["adapted_at"] == rec.adapted_at.isoformat()
    assert lineage["model_sha256"] == rec.sha256 and lineage["generation"] == 1


def test_batch_mixing_series_and_architectures_keeps_order_and_values(served: Served) -> None:
    ids = ["c1", "m0", "m3", "c1", "c2", "m0"]
    items = [
        {"series_id": sid, "window": _window(served, sid, seed=i)} for i, sid in enumerate(ids)
    ]
    r = served.client.post("/v1/score", json={"items": items})
    assert r.status_code == 200
    results = schemas.BatchResult.model_validate(r.json()).results
    assert [res.series_id for res in results] == ids
    for item, res in zip(items, results, strict=True):
        single = served.client.post("/v1/score", json=item).json()
        assert single["forecast"] == res.forecast and single["sigma"] == res.sigma  # bit-equal
        ref_f, ref_s = _offline(served, item["series_id"], item["window"])
        scale = float(served.record(item["series_id"]).metadata["scale"])
        assert _close(res.forecast, ref_f, scale) and _close(res.sigma, ref_s, scale)
        assert res.residual is None and res.anomaly_score is None
    assert results[0].lineage.family == "conv" and results[1].lineage.family == "hourly"


def test_series_detail(served: Served) -> None:
    body = served.client.get("/v1/series/c0").json()
    detail = schemas.SeriesDetail.model_validate(body)
    rec = served.record("c0")
    assert (detail.family, detail.window, detail.horizon) == ("conv", CONV.window, CONV.horizon)
    assert detail.threshold == rec.threshold and detail.residual_scale == rec.residual_scale
    assert detail.served_by == "bank" and detail.lineage.model_sha256 == rec.sha256
    missing = served.client.get("/v1/series/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"][0]["msg"]


def test_metrics_count_requests_errors_and_models(served: Served) -> None:
    served.client.post("/v1/score", json={"series_id": "m0", "window": [1.0] * 12})
    served.client.post("/v1/score", json={"series_id": "m0", "window": [1.0] * 12})
    served.client.post("/v1/score", json={"series_id": "zz", "window": [1.0] * 12})
    text = served.client.get("/metrics").text
    assert 'mamlctl_requests_total{endpoint="/v1/score",status="200"} 2.0' in text
    assert 'mamlctl_requests_total{endpoint="/v1/score",status="404"} 1.0' in text
    assert 'mamlctl_errors_total{endpoint="/v1/score",type="not_found"} 1.0' in text
    assert "mamlctl_models_loaded 8.0" in text
    assert 'mamlctl_reloads_total{outcome="ok"} 1.0' in text
    assert 'mamlctl_request_seconds_count{endpoint="/v1/score"} 3.0' in text
    assert "mamlctl_scored_rows_total 2.0" in text


def test_openapi_documents_the_api(served: Served) -> None:
    doc = served.client.get("/openapi.json").json()
    post = doc["paths"]["/v1/score"]["post"]
    refs = orjson.dumps(post["requestBody"]).decode()
    assert "ScoreItem" in refs and "ScoreBatch" in refs
    assert {"200", "404", "413", "422"} <= set(post["responses"])
    assert {"/v1/series/{series_id}", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    schemas_doc = doc["components"]["schemas"]
    item = orjson.dumps(schemas_doc["BatchResult"]["properties"]["results"]).decode()
    assert "ItemError" in item and "ScoreResult" in item  # a batch answers per item
    assert "load_error" in schemas_doc["SeriesDetail"]["properties"]
    assert "per item" in post["description"]


# ----------------------------------------------------------------------------- bad input

W12 = [1.0] * 12
BAD: list[tuple[str, bytes, int, list[Any]]] = [
    ("malformed json", b'{"series_id": "m0", "window": [1,2', 422, ["body"]),
    ("not an object", b"[1, 2, 3]", 422, ["body"]),
    ("NaN literal", b'{"series_id": "m0", "window": [NaN]}', 422, ["body"]),
    ("missing window", b'{"series_id": "m0"}', 422, ["body", "window"]),
    ("missing series_id", orjson.dumps({"window": W12}), 422, ["body", "series_id"]),
    (
        "series_id not str",
        orjson.dumps({"series_id": 5, "window": W12}),
        422,
        ["body", "series_id"],
    ),
    (
        "wrong length",
        orjson.dumps({"series_id": "m0", "window": [1.0] * 11}),
        422,
        ["body", "window"],
    ),
    (
        "string value",
        orjson.dumps({"series_id": "m0", "window": [*W12[:3], "x", *W12[4:]]}),
        422,
        ["body", "window", 3],
    ),
    (
        "bool value",
        orjson.dumps({"series_id": "m0", "window": [True, *W12[1:]]}),
        422,
        ["body", "window", 0],
    ),
    (
        "null value",
        orjson.dumps({"series_id": "m0", "window": [*W12[:11], None]}),
        422,
        ["body", "window", 11],
    ),
    (
        "window not list",
        orjson.dumps({"series_id": "m0", "window": "1,2"}),
        422,
        ["body", "window"],
    ),
    (
        "inf in float32",
        b'{"series_id": "m0", "window": [1,1,1,1,1,1,1,1,1,1,1,1e39]}',
        422,
        ["body", "window", 11],
    ),
    (
        "overflowing int",
        b'{"series_id": "m0", "window": [1,1,1,1,1,1,1,1,1,1,1,' + b"9" * 400 + b"]}",
        422,
        ["body"],
    ),
    ("unknown field", orjson.dumps({"series_id": "m0", "window": W12, "x": 1}), 422, ["body", "x"]),
    (
        "actual too long",
        orjson.dumps({"series_id": "m0", "window": W12, "actual": [1.0] * 5}),
        422,
        ["body", "actual"],
    ),
    (
        "actual empty",
        orjson.dumps({"series_id": "m0", "window": W12, "actual": []}),
        422,
        ["body", "actual"],
    ),
    (
        "actual inf",
        orjson.dumps({"series_id": "m0", "window": W12, "actual": [1e39]}),
        422,
        ["body", "actual", 0],
    ),
    ("empty batch", b'{"items": []}', 422, ["body", "items"]),
    ("items not list", b'{"items": {}}', 422, ["body", "items"]),
    ("batch extra key", b'{"items": [], "more": 1}', 422, ["body", "more"]),
    (
        "bad item in batch",
        orjson.dumps({"items": [{"series_id": "m0", "window": W12}, 3]}),
        422,
        ["body", "items", 1],
    ),
    (
        "unknown series",
        orjson.dumps({"series_id": "zz", "window": W12}),
        404,
        ["body", "series_id"],
    ),
]


@pytest.mark.parametrize(("name", "body", "status", "loc"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_naming_the_field(
    served: Served, name: str, body: bytes, status: int, loc: list[Any]
) -> None:
    r = served.client.post("/v1/score", content=body)
    assert r.status_code == status, r.text
    detail = schemas.ErrorBody.model_validate(r.json()).detail
    assert isinstance(detail, list) and detail[0].loc[: len(loc)] == loc


def test_a_batch_answers_per_item_and_the_valid_items_as_alone(
    make_served: Callable[..., Served], tmp_path: Any
) -> None:
    """Oracle: the same batch without its failing items (array_equal, whole result objects)."""
    models = tmp_path / "home" / "models"
    broken = write_series(models, MLP, ["broken"], seed=9)[0]
    (models / broken.path).write_bytes(b"not onnx")  # its model fails to load
    s = make_served(extra=[broken])
    good = [
        {"series_id": "m1", "window": _window(s, "m1", 1)},
        {"series_id": "c0", "window": _window(s, "c0", 2), "actual": [1.0, 2.0]},
        {"series_id": "m1", "window": _window(s, "m1", 3), "actual": [3.0]},
    ]
    bad = [
        ({"series_id": "zz", "window": W12}, 404, "not_found", ["series_id"]),
        ({"series_id": "broken", "window": W12}, 404, "not_found", ["series_id"]),
        ({"series_id": "m0", "window": [1.0] * 11}, 422, "window_length", ["window"]),
        ({"series_id": "m0", "window": W12, "actual": [1.0] * 5}, 422, "actual_length", ["actual"]),
        ({"series_id": "m2", "window": [*W12[:5], 1e39, *W12[6:]]}, 422, "finite_number",
         ["window", 5]),
        ({"series_id": "c1", "window": [-1e300] * 16}, 422, "finite_number", ["window", 0]),
        ({"series_id": "m2", "window": W12, "actual": [0.0, 1e39]}, 422, "finite_number",
         ["actual", 1]),
    ]  # fmt: skip
    items = [good[0], bad[0][0], bad[1][0], good[1], *(b[0] for b in bad[2:]), good[2]]
    r = s.client.post("/v1/score", content=orjson.dumps({"items": items}))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    schemas.BatchResult.model_validate(r.json())
    alone = s.client.post("/v1/score", json={"items": good}).json()["results"]
    assert [results[0], results[3], results[-1]] == alone
    for k, res in zip((0, 3, -1), alone, strict=True):
        assert np.array_equal(
            np.array(results[k]["forecast"], np.float32), np.array(res["forecast"], np.float32)
        )
    failed = [results[1], results[2], *results[4:-1]]
    for pos, res, (item, status, kind, loc) in zip((1, 2, 4, 5, 6, 7, 8), failed, bad, strict=True):
        assert res["series_id"] == item["series_id"] and set(res) == {"series_id", "error"}
        err = res["error"]
        assert (err["status"], err["type"]) == (status, kind), err
        assert err["loc"] == ["body", "items", pos, *loc]
    assert "not loaded" in results[2]["error"]["msg"]
    # every item failing is still a 200 answered per item
    r = s.client.post("/v1/score", json={"items": [bad[0][0], bad[2][0]]})
    assert r.status_code == 200 and all("error" in res for res in r.json()["results"])
    text = s.client.get("/metrics").text
    assert "mamlctl_scored_rows_total 6.0" in text  # only scored rows count (3 + 3 alone)


def test_batch_over_the_limit_is_422(make_served: Callable[..., Served]) -> None:
    s = make_served(options=ServeOptions(reload=False, max_batch=3))
    items = [{"series_id": "m0", "window": W12}] * 4
    r = s.client.post("/v1/score", json={"items": items})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "too_long"
    assert s.client.post("/v1/score", json={"items": items[:3]}).status_code == 200


def test_body_over_the_limit_is_413(make_served: Callable[..., Served]) -> None:
    s = make_served(options=ServeOptions(reload=False, max_body_bytes=2048))
    big = orjson.dumps({"series_id": "m0", "window": [1.234567] * 400})
    assert len(big) > 2048
    assert s.client.post("/v1/score", content=big).status_code == 413

    async def chunks() -> Any:  # no content-length: the limit holds while streaming
        for _ in range(10):
            yield b" " * 500

    r = s.client.post("/v1/score", content=chunks())
    assert r.status_code == 413


# ----------------------------------------------------------------------------- auth


def test_auth_on(make_served: Callable[..., Served]) -> None:
    s = make_served(token="s3cret")
    anon = Client(s.app)
    wrong = Client(s.app, {"Authorization": "Bearer s3creT"})
    body = {"series_id": "m0", "window": W12}
    for client in (anon, wrong):
        assert client.post("/v1/score", json=body).status_code == 401
        assert client.get("/v1/series/m0").status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.get("/openapi.json").status_code == 401
    assert anon.post("/v1/score", json=body).headers["www-authenticate"] == "Bearer"
    assert anon.get("/healthz").status_code == 200 and anon.get("/readyz").status_code == 200
    assert s.client.post("/v1/score", json=body).status_code == 200
    assert s.client.get("/v1/series/m0").status_code == 200
    assert s.client.get("/metrics").status_code == 200


def test_auth_off_everything_open(served: Served) -> None:
    anon = Client(served.app)
    assert anon.post("/v1/score", json={"series_id": "m0", "window": W12}).status_code == 200
    assert anon.get("/metrics").status_code == 200


# ----------------------------------------------------------------------------- integrity


def test_files_are_opened_only_below_the_models_dir_and_after_their_hash(
    make_served: Callable[..., Served], tmp_path: Any
) -> None:
    models = tmp_path / "home" / "models"
    good = write_series(models, MLP, ["tampered", "moved", "impostor"], seed=7)
    tampered = good[0]
    path = models / tampered.path
    path.write_bytes(path.read_bytes() + b"\0")  # file changed after it was recorded
    outside = write_series(tmp_path / "elsewhere", MLP, ["outside"], seed=8)[0]
    escaping = dataclasses.replace(outside, path=f"../../elsewhere/{outside.path}")
    impostor = dataclasses.replace(good[2], series_id="victim")  # another series' file
    s = make_served(extra=[tampered, good[1], escaping, impostor])
    assert s.client.post("/v1/score", json={"series_id": "moved", "window": W12}).status_code == 200
    for sid, why in (("tampered", "sha256"), ("outside", "outside"), ("victim", "belongs")):
        r = s.client.post("/v1/score", json={"series_id": sid, "window": W12})
        assert r.status_code == 404 and why in r.json()["detail"][0]["msg"], r.text
    ready = s.client.get("/readyz").json()
    assert ready["failures"] == 3 and ready["series"] == 9


def test_a_graph_that_cannot_bank_is_served_by_per_series_sessions(
    make_served: Callable[..., Served], tmp_path: Any
) -> None:
    from test_bank import _with_unbankable_op

    models = tmp_path / "home" / "models"
    recs = write_series(models, Spec(), ["odd0", "odd1"], seed=11, family="odd")
    fixed = []
    for rec in recs:
        path = models / rec.path
        blob = _with_unbankable_op(path.read_bytes())
        path.write_bytes(blob)
        import hashlib

        fixed.append(dataclasses.replace(rec, sha256=hashlib.sha256(blob).hexdigest()))
    s = make_served(extra=fixed)
    assert s.client.get("/v1/series/odd1").json()["served_by"] == "sessions"
    window = [float(i) for i in range(12)]
    body = s.client.post("/v1/score", json={"series_id": "odd1", "window": window}).json()
    ref_f, _ = make_session((models / fixed[1].path).read_bytes()).run(
        None, {"window": np.array([window], dtype=np.float32)}
    )
    assert np.array_equal(np.array(body["forecast"], dtype=np.float32), ref_f[0])  # exact


def test_a_failing_reload_keeps_serving_the_last_state(served: Served) -> None:
    good = served.source.current()

    def broken() -> list[Any]:
        raise RuntimeError("database exploded")

    served.source.current = broken  # type: ignore[method-assign]
    served.source.replace([*good[:-1]])  # fingerprint moves, loading it fails
    assert served.app.holder.reload() is False
    assert "exploded" in (served.app.holder.last_error or "")
    body = {"series_id": "m0", "window": W12}
    r = served.client.post("/v1/score", json=body)
    assert r.status_code == 200 and r.json()["lineage"]["generation"] == 1
    del served.source.current  # back to the class method
    assert served.app.holder.reload() is True
    assert served.client.get("/readyz").json()["series"] == 7


# ----------------------------------------------------------------------------- hostile input

OVERFLOW = [3e38, -3e38] * (CONV.window // 2)  # finite float32; the conv model overflows


def test_a_deeply_nested_window_is_a_422_not_a_500(served: Served) -> None:
    """Regression: repr() of a ~1000-deep list in the error message raised RecursionError."""
    deep = "[" * 1000 + "1" + "]" * 1000
    single = '{"series_id": "m0", "window": [' + deep + "]}"
    batch = '{"items": [{"series_id": "m0", "window": [' + deep + "]}]}"
    for body, loc in ((single, ["body", "window", 0]), (batch, ["body", "items", 0, "window", 0])):
        r = served.client.post("/v1/score", content=body.encode())
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == loc and len(r.text) < 400
    too_deep = '{"series_id": "m0", "window": ' + "[" * 2000 + "]" * 2000 + "}"
    r = served.client.post("/v1/score", content=too_deep.encode())
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


def test_a_window_that_overflows_the_model_is_a_422_never_null(served: Served) -> None:
    """Regression: finite float32 windows near 3e38 gave ``null`` forecasts (inf in JSON)."""
    r = served.client.post("/v1/score", json={"series_id": "c0", "window": OVERFLOW})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["type"] == "model_overflow" and detail["loc"] == ["body", "window"]
    good = {"series_id": "c1", "window": _window(served, "c1")}
    r = served.client.post(
        "/v1/score", json={"items": [good, {"series_id": "c0", "window": OVERFLOW}]}
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first == served.client.post("/v1/score", json={"items": [good]}).json()["results"][0]
    assert None not in first["forecast"] and None not in first["sigma"]
    assert second["error"]["type"] == "model_overflow"
    assert second["error"]["loc"] == ["body", "items", 1, "window"]


def test_a_binary_row_that_overflows_the_model_is_answered_in_its_place(served: Served) -> None:
    from mamlctl.serving.binary import decode_response, encode_request

    good = _window(served, "c1")
    body = encode_request(["c1", "c0"], np.array([good, OVERFLOW], dtype=np.float32))
    r = served.client.post(
        "/v1/score", content=body, headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 200, r.text
    got = decode_response(r.content)
    assert got["status"].tolist() == [200, 422]
    assert got["meta"]["errors"][0]["error"]["type"] == "model_overflow"
    assert np.isfinite(got["forecast"][0]).all() and np.isnan(got["forecast"][1]).all()


def test_head_on_the_open_paths_is_200(served: Served) -> None:
    """Regression: HEAD /healthz answered 405."""
    for path in ("/healthz", "/readyz"):
        r = served.client.request("HEAD", path)
        assert r.status_code == 200 and r.content == b""
        assert int(r.headers["content-length"]) == len(served.client.get(path).content)


def test_the_bearer_scheme_is_case_insensitive(make_served: Callable[..., Served]) -> None:
    s = make_served(token="s3cret")
    body = {"series_id": "m0", "window": W12}
    for header, status in (
        ("bearer s3cret", 200),
        ("BEARER s3cret", 200),
        ("Bearer  s3cret", 200),
        ("Basic s3cret", 401),
        ("Bearers3cret", 401),
        ("bearer S3cret", 401),
    ):
        client = Client(s.app, {"Authorization": header})
        assert client.post("/v1/score", json=body).status_code == status, header
        assert client.get("/v1/series/m0").status_code == status, header


def test_an_empty_token_refuses_to_start(make_served: Callable[..., Served]) -> None:
    """Regression: MAMLCTL_API_TOKEN="" turned auth off without a word."""
    from mamlctl.errors import ConfigError

    with pytest.raises(ConfigError, match="MAMLCTL_API_TOKEN is set but empty"):
        make_served(token="")
    with pytest.raises(ConfigError):
        make_served(token="  ")
