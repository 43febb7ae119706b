"""Routes of the monitoring loop on the inner FastAPI app: ``POST /v1/observe``
(:mod:`mamlctl.serving.observe`), ``GET /v1/anomalies`` and ``GET /v1/series/{id}/anomalies``
(the registry's anomaly records). They need the registry database: with another model source
they answer 503 saying so."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError

from mamlctl.errors import InputError, NotFoundError
from mamlctl.serving.scoring import ClientError, parse

if TYPE_CHECKING:
    from mamlctl.serving.app import ScoringApp
    from mamlctl.serving.observe import Observer

OBSERVE_PATH = "/v1/observe"
_NO_DB = "observe needs the registry database as the model source (mamlctl serve)"


def _observer(outer: ScoringApp) -> Observer:
    if outer.observer is None:
        raise ClientError(503, ["state"], _NO_DB, "no_registry")
    if not outer.holder.ready:
        raise ClientError(503, ["state"], "models are still loading", "not_ready")
    return outer.observer


def _db_error(err: SQLAlchemyError) -> ClientError:
    msg = "registry database error: nothing was stored (details in the server log); retry"
    return ClientError(503, ["state"], msg, "store_unavailable")


def _records_doc(records: list[Any]) -> bytes:
    def item(rec: Any) -> dict[str, Any]:
        doc = dataclasses.asdict(rec)
        if isinstance(doc["timestamp"], datetime):
            doc["timestamp"] = doc["timestamp"].isoformat()
        return doc

    return orjson.dumps({"anomalies": [item(r) for r in records]})


def register_observe_routes(api: FastAPI, outer: ScoringApp) -> None:
    holder, options = outer.holder, outer.options

    @api.post(
        OBSERVE_PATH,
        summary="Observations in, anomalies out: the service keeps each series' window.",
        description="Body `{series_id, timestamp, value}` or `{items: [...]}`; timestamp an "
        "ISO 8601 string or the integer position, as the series is stored. Each observation "
        "is scored against the one-step forecast of the window before it, then appended and "
        "stored (one transaction per request, committed before this answer). Per item: "
        "`status` scored | warming_up | duplicate, or an `error` (404 unknown series, 409 "
        "out_of_order/conflict, 422 invalid value or timestamp).",
    )
    async def observe_route(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > options.max_body_bytes:
            limit = options.max_body_bytes
            raise ClientError(413, ["body"], f"request body exceeds {limit} bytes", "too_large")
        observer = _observer(outer)
        items, is_batch = parse(raw, max_batch=options.max_batch)
        state = holder.state
        try:
            body, flagged = await asyncio.to_thread(
                observer.observe, state, items, is_batch=is_batch
            )
        except SQLAlchemyError as err:
            outer.log_store_error(err)
            raise _db_error(err) from None
        for family, count in flagged.items():
            outer.metrics.anomalies.labels(family).inc(count)
        return Response(body, media_type="application/json")

    def _list(**filters: Any) -> bytes:
        from mamlctl.registry.anomaly_queries import list_anomalies

        observer = _observer(outer)
        with observer.factory() as session:
            return _records_doc(list_anomalies(session, **filters))

    async def _listing(**filters: Any) -> Response:
        try:
            body = await asyncio.to_thread(_list, **filters)
        except NotFoundError as err:
            raise ClientError(404, ["query"], str(err), "not_found") from None
        except InputError as err:
            raise ClientError(422, ["query"], str(err), "value_error") from None
        except SQLAlchemyError as err:
            outer.log_store_error(err)
            raise _db_error(err) from None
        return Response(body, media_type="application/json")

    @api.get("/v1/anomalies", summary="Anomaly records, oldest first (filters optional).")
    async def anomalies_route(
        since: datetime | None = None,
        family: str | None = None,
        status: str | None = None,
        limit: int = 1000,
    ) -> Response:
        return await _listing(since=since, family=family, status=status, limit=limit)

    @api.get("/v1/series/{series_id}/anomalies", summary="One series' anomaly records.")
    async def series_anomalies_route(
        series_id: str, since: datetime | None = None, status: str | None = None, limit: int = 1000
    ) -> Response:
        return await _listing(series_id=series_id, since=since, status=status, limit=limit)
