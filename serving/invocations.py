"""MLflow's scoring-server protocol beside ``/v1``: ``GET /ping`` and ``POST /invocations``.

A client written for ``mlflow models serve`` (or for ``stages.pyfunc_model``'s pyfunc model)
talks to ``mamlctl serve`` unchanged::

    GET  /ping          200 once the models are loaded (as /readyz), 503 before; no auth
    POST /invocations   a Nixtla long frame ``unique_id, ds, y`` (``ds`` optional) as
                        {"dataframe_split": {"columns", "data"}} or {"dataframe_records": [...]}
                        (application/json, optional "params": {"level": [80, 95]}), or
                        text/csv with a header row
                        -> {"predictions": [{"unique_id", "ds", "yhat", "yhat-lo-80", ...}]}

Each series' window is its last L values (sorted by ``ds`` when given, else in the order
sent); the forecast is the served adapted model's, the numbers ``POST /v1/score`` answers for
the same window (float32, same runtime calls). The columns are the pyfunc model's
(:mod:`mamlctl.stages.pyfunc_model`): ``unique_id``, ``ds`` (the H stamps after the last one:
position + k for integer ``ds``, else last time + k * the median step of the rows sent; absent
when the frame has no ``ds``), ``yhat``, and ``yhat-lo-<l>``/``yhat-hi-<l>`` per requested
level, Gaussian around ``yhat`` with the served ``sigma``.

Errors are MLflow's ``{"error_code", "message"}`` plus ``loc`` (the offending field). A frame
that breaks the format fails as a whole (400; 413 over the body limit; 415 for another content
type). A frame answers per series, as a ``/v1/score`` batch answers per item: a series that is
not served (404), has fewer than L rows or values not finite as float32 (400) gets an entry in
``"errors"`` while the others are forecast; when no series could be forecast, the answer is
the first series' error itself (its status), so a client never takes an empty frame for
success.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from itertools import pairwise
from statistics import NormalDist, median
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import TypeAdapter

from mamlctl.serving import schemas
from mamlctl.serving.app import INVOCATIONS_PATH, PING_PATH
from mamlctl.serving.invocation_frame import (
    CSV_TYPE,
    JSON_TYPE,
    Frame,
    InvocationError,
    parse_invocation,
)
from mamlctl.serving.limits import OFFLOAD_BODY_BYTES
from mamlctl.serving.scoring import ClientError, not_found

if TYPE_CHECKING:
    from mamlctl.serving.app import ScoringApp
    from mamlctl.serving.state import SeriesEntry, ServingState

_DUMP_OPTS = orjson.OPT_SERIALIZE_NUMPY


def predict(state: ServingState, frame: Frame, levels: tuple[float, ...]) -> bytes:
    """The ``POST /invocations`` answer body (see the module doc for the per-series rule)."""
    errors: dict[str, ClientError] = {}
    ready: list[tuple[str, SeriesEntry, np.ndarray]] = []
    for sid, values in frame.values.items():
        loc = frame.first_loc[sid]
        entry = state.entries.get(sid)
        if entry is None:
            errors[sid] = not_found(state, sid, [*loc, "unique_id"])
            continue
        if len(values) < entry.window:
            errors[sid] = ClientError(
                400,
                [*loc, "y"],
                f"series {sid!r} has {len(values)} rows; its model takes the last "
                f"{entry.window} values",
                "window_length",
            )
            continue
        with np.errstate(over="ignore"):
            window = np.array(values[-entry.window :], dtype=np.float32)
        if not np.isfinite(window).all():
            msg = f"series {sid!r}: y values must be finite as float32"
            errors[sid] = ClientError(400, [*loc, "y"], msg, "finite_number")
            continue
        ready.append((sid, entry, window))
    outputs = _forecast(state, ready, errors, frame)
    rows: list[dict[str, Any]] = []
    for sid, entry, _ in ready:
        if sid in outputs:
            rows += _rows(frame, sid, entry, *outputs[sid], levels, errors)
    if not rows:
        first = errors[next(iter(frame.values))]
        raise InvocationError(first.status, first.loc, str(first))
    doc: dict[str, Any] = {"predictions": rows}
    if errors:
        doc["errors"] = [
            {"unique_id": sid, "error": errors[sid].item_error()}
            for sid in frame.values
            if sid in errors
        ]
    return orjson.dumps(doc, option=_DUMP_OPTS)


def _forecast(
    state: ServingState,
    ready: list[tuple[str, SeriesEntry, np.ndarray]],
    errors: dict[str, ClientError],
    frame: Frame,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``sid -> (forecast, sigma)``: one runtime call per group, as a ``/v1/score`` batch."""
    by_group: dict[int, list[int]] = {}
    for k, (_, entry, _) in enumerate(ready):
        by_group.setdefault(entry.group, []).append(k)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for group, idx in by_group.items():
        windows = np.stack([ready[k][2] for k in idx])
        rows = np.array([ready[k][1].row for k in idx], dtype=np.int64)
        forecast, sigma = state.runtimes[group].run(windows, rows)
        for j, k in enumerate(idx):
            sid = ready[k][0]
            if np.isfinite(forecast[j]).all() and np.isfinite(sigma[j]).all():
                out[sid] = (forecast[j], sigma[j])
            else:
                msg = "the model's forecast for this window is not finite: values too large"
                loc = [*frame.first_loc[sid], "y"]
                errors[sid] = ClientError(400, loc, msg, "model_overflow")
    return out


def _rows(
    frame: Frame,
    sid: str,
    entry: SeriesEntry,
    forecast: np.ndarray,
    sigma: np.ndarray,
    levels: tuple[float, ...],
    errors: dict[str, ClientError],
) -> list[dict[str, Any]]:
    stamps: list[Any] = [None] * entry.horizon
    if frame.has_ds:
        try:
            stamps = _future(frame.stamps[sid], entry.horizon)
        except ValueError as err:
            errors[sid] = ClientError(400, [*frame.first_loc[sid], "ds"], str(err), "ds_interval")
            return []
    zs = [(f"{level:g}", NormalDist().inv_cdf((1 + level / 100) / 2)) for level in levels]
    out = []
    for k in range(entry.horizon):
        row: dict[str, Any] = {"unique_id": sid}
        if frame.has_ds:
            row["ds"] = stamps[k]
        row["yhat"] = forecast[k]
        yhat, s = float(forecast[k]), float(sigma[k])
        for label, z in zs:
            row[f"yhat-lo-{label}"] = yhat - z * s
            row[f"yhat-hi-{label}"] = yhat + z * s
        out.append(row)
    return out


def _future(stamps: list[Any], horizon: int) -> list[Any]:
    """The ``horizon`` stamps after the last: position + k, or time + k * median step."""
    last = stamps[-1]
    if isinstance(last, int):
        return [last + k for k in range(1, horizon + 1)]
    steps = [(b - a) / timedelta(microseconds=1) for a, b in pairwise(stamps)]
    step = round(median(steps)) if steps else 0
    if step <= 0:
        raise ValueError("ds: no sampling interval to place the forecast's timestamps")
    return [(last + timedelta(microseconds=step * k)).isoformat() for k in range(1, horizon + 1)]


# --- routes ---------------------------------------------------------------------------------
def register_invocation_routes(api: FastAPI, outer: ScoringApp) -> None:
    """Add ``POST /invocations`` and the documented ``GET /ping`` to the inner FastAPI app."""
    holder, options = outer.holder, outer.options

    @api.exception_handler(InvocationError)
    async def _invocation_error(_: Request, err: InvocationError) -> Response:
        return Response(err.body(), status_code=err.status, media_type=JSON_TYPE)

    request_schema = _inline(
        TypeAdapter(schemas.InvocationSplit | schemas.InvocationRecords).json_schema()
    )
    error: dict[str, Any] = {"model": schemas.InvocationErrorBody}

    @api.post(
        INVOCATIONS_PATH,
        response_model=schemas.InvocationResult,
        responses={
            400: {**error, "description": "Malformed frame or parameter (field in loc)."},
            404: {**error, "description": "No series of the frame is served."},
            413: {**error, "description": "Body over the size limit."},
            415: {**error, "description": "Neither application/json nor text/csv."},
            503: {**error, "description": "Models still loading."},
        },
        summary="MLflow scoring protocol: forecast a Nixtla long frame (unique_id, ds, y).",
        description="The frame as `dataframe_split` or `dataframe_records` (application/json, "
        "optional `params.level`: interval levels in percent) or text/csv with a header row. "
        "Each series' window is its last L values (sorted by `ds` when given); `yhat` is what "
        "`POST /v1/score` forecasts for that window. Rows: `unique_id`, `ds` (the H stamps "
        "after the last; absent when the frame has none), `yhat`, `yhat-lo-<l>`/`yhat-hi-<l>`. "
        "A series that is not served (404), has fewer than L rows or values not finite as "
        "float32 (400) goes to `errors` while the others are forecast; when no series can be "
        "forecast, the first series' error is the answer.",
        tags=["mlflow"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    JSON_TYPE: {"schema": request_schema},
                    CSV_TYPE: {"schema": {"type": "string", "description": "unique_id,ds,y rows"}},
                },
            }
        },
    )
    async def invocations(request: Request) -> Response:
        if not holder.ready:
            raise InvocationError(503, ["state"], "models are still loading")
        body = await read_limited(request, options.max_body_bytes)
        content_type = request.headers.get("content-type")
        state = holder.state  # read once: this request finishes on this state

        def answer() -> bytes:
            frame, levels = parse_invocation(body, content_type)
            return predict(state, frame, levels)

        if len(body) >= OFFLOAD_BODY_BYTES:  # a large frame: off the event loop
            payload = await asyncio.to_thread(answer)
        else:
            payload = answer()
        return Response(payload, media_type=JSON_TYPE)

    @api.get(
        PING_PATH,
        responses={503: {"model": schemas.ErrorBody}},
        summary="MLflow health check: 200 once the models are loaded, as /readyz (no auth).",
        tags=["mlflow"],
    )
    async def ping() -> Response:
        status, body = outer.readiness()
        return Response(body, status_code=status, media_type=JSON_TYPE)


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it is (or is declared) over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvocationError(413, ["body"], f"request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvocationError(413, ["body"], f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` references replaced by the definitions (an OpenAPI
    request body written by hand cannot point into a ``$defs`` of its own)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result
