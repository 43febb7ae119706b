"""MLflow's scoring protocol on the scoring server: ``GET /ping`` and ``POST /invocations``.

Oracle: ``POST /v1/score`` (a batch) on the same windows -- each series' last L values of the
frame, sorted by ``ds`` -- gives ``yhat`` (the same float32 numbers) and ``sigma``, from which
the interval columns are ``yhat -/+ z_{(1+l)/2} * sigma`` (``statistics.NormalDist``); the
future ``ds`` are position + k, or the last time + k * the step of the rows sent. The three
request forms (dataframe_split, dataframe_records, CSV) give identical answers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import Any

import numpy as np
import orjson
import pytest
from conftest import CONV, MLP, Served

from mamlctl.serving import schemas
from mamlctl.serving.app import ServeOptions

START = datetime(2026, 3, 1, 6, 0)
LEVELS = [80.0, 95.0]


def _values(served: Served, sid: str, n: int, seed: int) -> list[float]:
    rec = served.record(sid)
    loc, scale = float(rec.metadata["loc"]), float(rec.metadata["scale"])
    rng = np.random.default_rng(seed)
    return [float(v) for v in rng.normal(loc, scale, n).astype(np.float32)]


def _frame(served: Served) -> list[dict[str, Any]]:
    """m0: 20 daily rows, sent newest first; c1: 16 hourly rows, shuffled."""
    rows: list[dict[str, Any]] = []
    m0 = _values(served, "m0", 20, seed=1)
    rows += [
        {"unique_id": "m0", "ds": (START + timedelta(days=i)).isoformat(), "y": m0[i]}
        for i in reversed(range(20))
    ]
    c1 = _values(served, "c1", 16, seed=2)
    order = np.random.default_rng(3).permutation(16)
    rows += [
        {"unique_id": "c1", "ds": (START + timedelta(hours=int(i))).isoformat(), "y": c1[i]}
        for i in order
    ]
    return rows


def _split(rows: list[dict[str, Any]], columns: tuple[str, ...] = ("unique_id", "ds", "y")) -> Any:
    return {"columns": list(columns), "data": [[r[c] for c in columns] for r in rows]}


def _oracle(served: Served, rows: list[dict[str, Any]]) -> dict[str, tuple[list[float], ...]]:
    """sid -> (forecast, sigma) of /v1/score on the last L values sorted by ds."""
    ids = list(dict.fromkeys(r["unique_id"] for r in rows))
    items = []
    for sid in ids:
        mine = sorted((r for r in rows if r["unique_id"] == sid), key=lambda r: r["ds"])
        window = [r["y"] for r in mine][-served.record(sid).window :]
        items.append({"series_id": sid, "window": window})
    results = served.client.post("/v1/score", json={"items": items}).json()["results"]
    return {r["series_id"]: (r["forecast"], r["sigma"]) for r in results}


def _f32(values: list[float]) -> list[float]:
    """The float32 numbers of a JSON answer, as Python floats (interval arithmetic in float64)."""
    return [float(v) for v in np.array(values, dtype=np.float32)]


def _check_against_oracle(served: Served, rows: list[dict[str, Any]], got: list[Any]) -> None:
    want = _oracle(served, rows)
    horizons = {"m0": MLP.horizon, "c1": CONV.horizon}
    assert [p["unique_id"] for p in got] == [s for s in want for _ in range(horizons[s])]
    for sid, (forecast, sigma) in want.items():
        mine = [p for p in got if p["unique_id"] == sid]
        assert [p["yhat"] for p in mine] == forecast  # the same JSON numbers
        for level in LEVELS:
            z = NormalDist().inv_cdf((1 + level / 100) / 2)
            lo = [f - z * s for f, s in zip(_f32(forecast), _f32(sigma), strict=True)]
            hi = [f + z * s for f, s in zip(_f32(forecast), _f32(sigma), strict=True)]
            assert [p[f"yhat-lo-{level:g}"] for p in mine] == pytest.approx(lo, rel=1e-12)
            assert [p[f"yhat-hi-{level:g}"] for p in mine] == pytest.approx(hi, rel=1e-12)
    last = START + timedelta(days=19)
    assert [p["ds"] for p in got if p["unique_id"] == "m0"] == [
        (last + timedelta(days=k)).isoformat() for k in (1, 2, 3, 4)
    ]
    last = START + timedelta(hours=15)
    assert [p["ds"] for p in got if p["unique_id"] == "c1"] == [
        (last + timedelta(hours=k)).isoformat() for k in (1, 2, 3)
    ]


def test_invocations_forecast_what_v1_score_forecasts_in_every_input_form(
    served: Served,
) -> None:
    rows = _frame(served)
    params = {"level": LEVELS}
    split = served.client.post(
        "/invocations", json={"dataframe_split": _split(rows), "params": params}
    )
    assert split.status_code == 200, split.text
    got = split.json()
    schemas.InvocationResult.model_validate(got)
    assert "errors" not in got
    _check_against_oracle(served, rows, got["predictions"])
    records = served.client.post("/invocations", json={"dataframe_records": rows, "params": params})
    assert records.json() == got
    # CSV (no params: point forecasts only), columns in another order
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["y", "unique_id", "ds"])
    writer.writerows([[repr(r["y"]), r["unique_id"], r["ds"]] for r in rows])
    answer = served.client.post(
        "/invocations", content=text.getvalue().encode(), headers={"content-type": "text/csv"}
    )
    assert answer.status_code == 200, answer.text
    point = [{k: p[k] for k in ("unique_id", "ds", "yhat")} for p in got["predictions"]]
    assert answer.json() == {"predictions": point}


def test_integer_ds_are_positions_and_no_ds_takes_the_rows_in_order(served: Served) -> None:
    m0 = _values(served, "m0", 20, seed=4)
    rows = [{"unique_id": "m0", "ds": 100 + i, "y": m0[i]} for i in reversed(range(20))]
    forecast, _ = _oracle(served, rows)["m0"]
    answer = served.client.post("/invocations", json={"dataframe_records": rows})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "predictions": [
            {"unique_id": "m0", "ds": 120 + k, "yhat": f} for k, f in enumerate(forecast)
        ]
    }
    rows.reverse()  # in time order, then sent without ds
    answer = served.client.post(
        "/invocations", json={"dataframe_split": _split(rows, ("unique_id", "y"))}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [{"unique_id": "m0", "yhat": f} for f in forecast]}


def test_ping_is_readiness_without_auth(make_served: Callable[..., Served]) -> None:
    s = make_served(load=False, token="secret")
    bare = type(s.client)(s.app)  # no Authorization header
    assert bare.get("/ping").status_code == 503
    loading = s.client.post("/invocations", json={"dataframe_records": _frame(s)})
    assert loading.status_code == 503 and loading.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert s.app.holder.reload(force=True)
    assert bare.get("/ping").status_code == 200
    assert bare.get("/ping").json()["status"] == "ready"
    assert bare.post("/invocations", json={"dataframe_records": _frame(s)}).status_code == 401
    assert s.client.post("/invocations", json={"dataframe_records": _frame(s)}).status_code == 200


def test_invocations_answer_per_series(served: Served) -> None:
    rows = _frame(served)
    extra = [{"unique_id": "nope", "ds": 1, "y": 1.0}]
    short = [{"unique_id": "m1", "ds": i, "y": 1.0} for i in range(MLP.window - 1)]
    # integer ds beside time ds: one column of mixed kinds is a format error
    mixed = served.client.post("/invocations", json={"dataframe_records": rows + extra})
    assert mixed.status_code == 400 and mixed.json()["loc"] == [
        "body",
        "dataframe_records",
        36,
        "ds",
    ]
    rows = [{**r, "ds": i} for i, r in enumerate(reversed(rows))]
    whole = served.client.post("/invocations", json={"dataframe_records": rows + extra + short})
    alone = served.client.post("/invocations", json={"dataframe_records": rows})
    assert whole.status_code == 200, whole.text
    doc = whole.json()
    assert doc["predictions"] == alone.json()["predictions"]
    errors = {e["unique_id"]: e["error"] for e in doc["errors"]}
    assert errors["nope"]["status"] == 404 and errors["nope"]["type"] == "not_found"
    assert errors["m1"]["status"] == 400 and errors["m1"]["type"] == "window_length"
    assert f"last {MLP.window}" in errors["m1"]["msg"]
    # no series can be forecast: the first one's error is the answer
    only = served.client.post("/invocations", json={"dataframe_records": extra + short})
    assert only.status_code == 404
    assert only.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "'nope'" in only.json()["message"]
    short_only = served.client.post("/invocations", json={"dataframe_records": short})
    assert short_only.status_code == 400 and short_only.json()["loc"][-1] == "y"


ROW = {"unique_id": "m0", "y": 2.0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataframe_split": {"columns": ["unique_id", "ds"], "data": []}}, "columns"),
        ({"dataframe_split": {"columns": ["unique_id", "y"], "data": [["m0", "x"]]}}, 1),
        ({"dataframe_split": {"columns": ["unique_id", "y"], "data": [["m0"]]}}, 0),
        ({"dataframe_split": {"columns": ["unique_id", "y"], "data": []}}, "body"),
        ({"dataframe_split": {"columns": ["unique_id", "y"], "rows": []}}, "rows"),
        ({"dataframe_records": [{"unique_id": "m0"}]}, "y"),
        ({"dataframe_records": [{"unique_id": None, "y": 1.0}]}, "unique_id"),
        ({"dataframe_records": [{"unique_id": "m0", "ds": 1.5, "y": 1.0}]}, "ds"),
        ({"dataframe_records": [{"unique_id": "m0", "y": 1}, {"unique_id": "m0", "ds": 2}]}, "y"),
        ({"dataframe_records": [{"unique_id": "m0", "y": 1}, {**ROW, "ds": 2}]}, "ds"),
        ({"dataframe_records": [{"unique_id": "m0", "ds": "yesterday", "y": 1.0}]}, "ds"),
        ({"dataframe_records": "m0"}, "dataframe_records"),
        ({"instances": [[1.0]]}, "instances"),
        ({"dataframe_records": [], "dataframe_split": {}}, "body"),
        ({"dataframe_records": [], "rows": []}, "rows"),
        ({"dataframe_records": [{"unique_id": "m0", "y": 1}], "params": {"level": [100]}}, 0),
        ({"dataframe_records": [{"unique_id": "m0", "y": 1}], "params": {"alpha": 1}}, "alpha"),
        ([1, 2], "body"),
    ],
)
def test_malformed_frames_are_400_naming_the_field(served: Served, body: Any, field: Any) -> None:
    answer = served.client.post("/invocations", content=orjson.dumps(body), headers=_JSON)
    assert answer.status_code == 400, answer.text
    doc = answer.json()
    schemas.InvocationErrorBody.model_validate(doc)
    assert doc["error_code"] == "BAD_REQUEST" and doc["loc"][-1] == field


_JSON = {"content-type": "application/json"}


def test_content_type_size_and_bad_bytes(make_served: Callable[..., Served]) -> None:
    s = make_served(options=ServeOptions(reload=False, max_body_bytes=4096))
    rows = [{"unique_id": "m0", "ds": i, "y": 1.0} for i in range(200)]
    big = s.client.post("/invocations", json={"dataframe_records": rows})
    assert big.status_code == 413 and big.json()["loc"] == ["body"]
    plain = s.client.post("/invocations", content=b"x", headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and "content-type" in plain.json()["message"]
    for raw, ctype in ((b"{", "application/json"), (b"\xff\xfe", "text/csv")):
        bad = s.client.post("/invocations", content=raw, headers={"content-type": ctype})
        assert bad.status_code == 400 and bad.json()["loc"] == ["body"]
    line = s.client.post(
        "/invocations", content=b"unique_id,y\nm0,abc\n", headers={"content-type": "text/csv"}
    )
    assert line.status_code == 400 and line.json()["loc"] == ["body", "line", 2, "y"]


def test_the_openapi_document_names_the_mlflow_routes(served: Served) -> None:
    doc = served.client.get("/openapi.json").json()
    post = doc["paths"]["/invocations"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "text/csv"}
    assert {"200", "400", "404", "413", "415", "503"} <= set(post["responses"])
    assert "get" in doc["paths"]["/ping"]
