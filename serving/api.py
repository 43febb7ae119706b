"""The inner FastAPI app of :class:`~mamlctl.serving.app.ScoringApp` (built on first use).

``GET /v1/series/{id}``, ``/metrics``, ``/openapi.json`` and ``/docs``, plus the documented
shapes of ``POST /v1/score``, ``/healthz`` and ``/readyz`` (answered by the outer layer, the
routes here behave identically if this app is mounted alone). Importing FastAPI and building
the routes costs ~0.4 s, so the outer layer builds this app only once the models are loaded (or
on the first request that needs it), off the cold-start path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from mamlctl.serving import schemas
from mamlctl.serving.app import SCORE_PATH
from mamlctl.serving.scoring import ClientError, parse, score, series_detail

if TYPE_CHECKING:
    from mamlctl.serving.app import ScoringApp


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def build_api(outer: ScoringApp) -> FastAPI:
    holder, options = outer.holder, outer.options

    api = FastAPI(
        title="mamlctl scoring API",
        version="1",
        redirect_slashes=False,  # '/v1/series/x/' is an unknown path (404), not a 307
        summary="Forecasts and anomaly scores from per-series adapted MAML models (onnxruntime).",
        responses={401: {"model": schemas.ErrorBody, "description": "Missing/wrong token."}},
    )

    @api.exception_handler(ClientError)
    async def _client_error(_: Request, err: ClientError) -> Response:
        return _json({"detail": err.detail}, err.status)

    errors: dict[int | str, dict[str, Any]] = {
        404: {"model": schemas.ErrorBody, "description": "Unknown series (single item)."},
        413: {"model": schemas.ErrorBody, "description": "Body over the size limit."},
        422: {"model": schemas.ErrorBody, "description": "Invalid input (field named)."},
        503: {"model": schemas.ErrorBody, "description": "Models still loading."},
    }

    @api.post(
        SCORE_PATH,
        response_model=schemas.ScoreResult | schemas.BatchResult,
        responses=errors,
        summary="Forecast, residual and anomaly score for one item or a batch of items.",
        description="JSON by default. Large batches may instead be sent as "
        "`Content-Type: application/octet-stream` in the binary batch format of "
        "`mamlctl.serving.binary` (float32 windows; same checks, identical numbers). "
        "A batch answers per item: an item naming an unknown or unloaded series, a window or "
        "`actual` of the wrong length, a value not finite as float32 or a window the model "
        "cannot score gets an `ItemError` in its place (200 for the batch); a batch that breaks "
        "the schema, is empty or too long fails as a whole (422).",
    )
    async def score_route(
        request: Request, body: schemas.ScoreItem | schemas.ScoreBatch
    ) -> Response:
        del body  # documented shape; validation is the hot path's (identical rules)
        raw = await request.body()
        if not holder.ready:
            raise ClientError(503, ["state"], "models are still loading", "not_ready")
        items, is_batch = parse(raw, max_batch=options.max_batch)
        payload, _ = score(holder.state, items, is_batch=is_batch)
        return Response(payload, media_type="application/json")

    @api.get(
        "/v1/series/{series_id}",
        response_model=schemas.SeriesDetail,
        responses={404: errors[404]},
        summary="Family, model lineage and threshold of a served series.",
    )
    async def series_route(series_id: str) -> Response:
        return _json(series_detail(holder.state, series_id))

    from mamlctl.serving.observe_api import register_observe_routes

    register_observe_routes(api, outer)

    from mamlctl.serving.oip import register_oip_routes

    register_oip_routes(api, outer)

    from mamlctl.serving.invocations import register_invocation_routes

    register_invocation_routes(api, outer)

    @api.get("/healthz", response_model=schemas.Health, summary="Liveness (no auth).")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get(
        "/readyz",
        response_model=schemas.Ready,
        responses={503: {"model": schemas.ErrorBody}},
        summary="Ready once the models are loaded (no auth).",
    )
    async def readyz() -> Response:
        status, body = outer.readiness()
        return Response(body, status_code=status, media_type="application/json")

    @api.get("/metrics", summary="Prometheus metrics.", response_class=Response)
    async def metrics() -> Response:
        outer.flush_metrics()
        return Response(outer.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return api
