"""The ASGI app factory: ``create_app(settings, source)``.

Shape of the app::

    ScoringApp (plain ASGI)            lifespan (reload poller), auth, body limit, metrics,
      |                                POST /v1/score, GET /healthz, /readyz and /ping
      +-- FastAPI (built on first use) GET /v1/series/{id}, /metrics, /openapi.json, /docs,
                                       POST /invocations (MLflow), /v1/observe, /v2 (OIP)
                                       (+ the documented routes of the paths above)

``POST /v1/score`` is answered by the thin outer layer (FastAPI's routing, dependency and
pydantic layers would cost more than the model itself) through one synchronous function,
:meth:`ScoringApp.answer_score`, which ``mamlctl serve``'s HTTP protocol
(:mod:`mamlctl.serving.fastpath`) also calls straight from the parser. The FastAPI part
(:mod:`mamlctl.serving.api`) is imported and built once the models are loaded, off the cold
start. The state (models, lineage) lives in a :class:`~mamlctl.serving.holder.StateHolder`:
loaded in the background at startup (``/readyz`` answers 503 until then), re-built off the event
loop when the source's fingerprint changes and swapped as one reference; a request reads the
reference once, so it finishes on the state it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from mamlctl.serving import limits
from mamlctl.serving.auth import authorized, expected_token
from mamlctl.serving.binary import CONTENT_TYPE as BINARY_TYPE
from mamlctl.serving.binary import score_binary
from mamlctl.serving.busypoll import BusyPoll
from mamlctl.serving.holder import StateHolder
from mamlctl.serving.metrics import Metrics
from mamlctl.serving.observe import make_observer, sync_observer
from mamlctl.serving.scoring import ClientError, parse, score
from mamlctl.serving.shards import Shard
from mamlctl.serving.source import ModelSource
from mamlctl.settings import Settings
from mamlctl.timeseries.stream_detector import DetectorConfig

log = logging.getLogger("mamlctl.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SCORE_PATH = "/v1/score"
PING_PATH = "/ping"  # MLflow's scoring protocol (mamlctl.serving.invocations)
INVOCATIONS_PATH = "/invocations"
OPEN_PATHS = frozenset({"/healthz", "/readyz", PING_PATH})
JSON_TYPE = (b"content-type", b"application/json")
_JSON_HEADERS = [JSON_TYPE]
UNAUTHORIZED = b'{"detail":"missing or wrong bearer token"}'
WWW_AUTH = (b"www-authenticate", b"Bearer")
_UNAUTH_HEADERS = [JSON_TYPE, WWW_AUTH]
_BINARY_HEADERS = [(b"content-type", BINARY_TYPE)]


class ServeOptions(BaseModel):
    """Server knobs (unknown keys fail)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reload_interval: float = Field(default=2.0, gt=0, description="Seconds between DB polls.")
    max_body_bytes: int = Field(default=limits.DEFAULT_MAX_BODY, ge=1024)
    max_batch: int = Field(default=limits.DEFAULT_MAX_BATCH, ge=1)
    reload: bool = Field(default=True, description="Poll the source for new models.")
    batch_threads: int = Field(
        default=limits.DEFAULT_BATCH_THREADS,
        ge=1,
        le=limits.MAX_BATCH_THREADS,
        description="onnxruntime threads for calls of 32+ rows (1: one thread for all).",
    )
    busy_poll: float = Field(
        default=limits.DEFAULT_BUSY_POLL,
        ge=0,
        le=limits.MAX_BUSY_POLL,
        description="Seconds the event loop keeps polling after an answer (0: off; busypoll).",
    )
    max_failed_share: float = Field(
        default=limits.DEFAULT_MAX_FAILED_SHARE,
        ge=0,
        le=1,
        description="/readyz answers 503 when more than this share of the current models"
        " failed to load (1: never).",
    )
    allow_empty: bool = Field(
        default=False, description="/readyz answers 200 with no model loaded (else 503)."
    )
    announce: str | None = Field(
        default=None,
        description="Print one startup line naming this address once the models are loaded"
        " (mamlctl serve; mamlctl.serving.announce).",
    )
    announce_marker: str | None = Field(
        default=None, description="File the first of several workers claims to print the line."
    )
    flag: Literal["z", "rank"] = Field(
        default="rank",
        description="/v1/observe's is_anomaly: rank (rank_score >= 0.5: out of range, or a red"
        " anomaly likelihood) or z (z >= the series' calibrated threshold).",
    )
    load_before_accept: bool = Field(
        default=False,
        description="Finish the first load inside lifespan startup, so this process accepts no"
        " connection before its models are loaded (set by `serve --workers N`, N > 1: workers"
        " share one socket, and a loading worker would answer 503 while the others serve).",
    )


@dataclass(slots=True)
class _Poller:
    outer: ScoringApp
    interval: float
    enabled: bool

    async def first_load(self) -> None:
        await asyncio.to_thread(self.outer.holder.reload, force=True)
        self.outer.announce()
        # ready now; build the FastAPI part (docs, /metrics, /v1/series) off the cold start
        await asyncio.to_thread(lambda: self.outer.api)
        await asyncio.to_thread(sync_observer, self.outer)  # observe streams: stored windows

    async def run(self, *, loaded: bool = False) -> None:
        holder = self.outer.holder
        if not loaded:
            await self.first_load()
        while self.enabled:
            await asyncio.sleep(self.interval)
            if await asyncio.to_thread(holder.reload):
                self.outer.announce()  # the first load failed, a later one worked
                await asyncio.to_thread(sync_observer, self.outer)


#: ``(status, body, rows scored, error kind, headers)`` of one ``POST /v1/score``
_Answer = tuple[int, bytes, int, str | None, list[tuple[bytes, bytes]]]


class ScoringApp:
    """Outer ASGI layer (see module docstring). ``api`` is the inner FastAPI app."""

    def __init__(
        self,
        settings: Settings,
        source: ModelSource,
        options: ServeOptions,
        *,
        shard: Shard | None = None,
    ) -> None:
        self.options = options
        self.metrics = Metrics.create()
        self.holder = StateHolder(
            source, self.metrics, batch_threads=options.batch_threads, shard=shard
        )
        if shard is not None:
            server = shard.ring.servers[shard.index]
            self.metrics.shard_info.labels(str(shard.index), str(shard.count), server).set(1)
        self._token = expected_token(settings)  # ConfigError when set but empty
        self._api: Any = None
        self._api_lock = threading.Lock()
        self._poller = _Poller(self, options.reload_interval, options.reload)
        self._poll_task: asyncio.Task[None] | None = None
        self.busy_poll = BusyPoll(options.busy_poll)
        m = self.metrics
        self._latency = m.latency.labels(SCORE_PATH)
        self._ok = m.requests.labels(SCORE_PATH, "200")
        # 200s and rows of the hot path: plain ints (no lock per request), added to the
        # Prometheus counters when /metrics is read (flush_metrics)
        self._pending_ok = 0
        self._pending_rows = 0
        self._pool: ThreadPoolExecutor | None = None  # large requests (OFFLOAD_BODY_BYTES)
        # POST /v1/observe (registry sources only)
        self.observer = make_observer(source, DetectorConfig(flag=options.flag))
        self._started = time.perf_counter()  # lifespan startup: the startup line's clock
        self._announced = False

    def announce(self) -> None:
        """Print the startup line once, when the models are first loaded (``options.announce``
        set, and this worker claimed the marker: :mod:`mamlctl.serving.announce`)."""
        address = self.options.announce
        if address is None or self._announced or not self.holder.ready:
            return
        self._announced = True
        from mamlctl.serving.announce import claim, startup_line

        if claim(self.options.announce_marker):
            seconds = time.perf_counter() - self._started
            print(startup_line(self.holder.state, address, seconds), flush=True)

    def log_store_error(self, err: BaseException) -> None:
        log.error("observe: registry database error: %s", err, exc_info=True)

    @property
    def api(self) -> Any:
        """The inner FastAPI app, built on first use (see :mod:`mamlctl.serving.api`)."""
        if self._api is None:
            with self._api_lock:
                if self._api is None:
                    from mamlctl.serving.api import build_api

                    self._api = build_api(self)
        return self._api

    def flush_metrics(self) -> None:
        """Add the hot path's pending counts to the Prometheus counters (before a scrape)."""
        ok, rows = self._pending_ok, self._pending_rows
        self._pending_ok -= ok
        self._pending_rows -= rows
        if ok:
            self._ok.inc(ok)
            self.metrics.rows.inc(rows)

    def readiness(self) -> tuple[int, bytes]:
        """``GET /readyz`` (no auth, so no error text of a driver or file is shown): 503 and
        why until the models are loaded; then 200 and the state summary, or 503 and the
        summary with ``"status": "degraded"`` when no model is loaded (unless ``allow_empty``)
        or more than ``max_failed_share`` of the current models failed to load."""
        holder = self.holder
        if not holder.ready:
            detail = holder.last_error_public or "models are still loading"
            return 503, orjson.dumps({"detail": detail})
        state, options = holder.state, self.options
        summary = state.summary()
        failed = len(state.failures)
        if state.n_series == 0 and not options.allow_empty:
            why = "no model loaded"
        elif failed and failed > options.max_failed_share * state.n_records:
            why = f"{failed} of {state.n_records} current models failed to load"
        else:
            return 200, orjson.dumps({"status": "ready", **summary})
        return 503, orjson.dumps({"status": "degraded", "detail": why, **summary})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        path = scope["path"]
        if path in OPEN_PATHS and scope["method"] in ("GET", "HEAD"):
            status, doc = (200, b'{"status":"ok"}') if path == "/healthz" else self.readiness()
            await _send(send, status, doc, head=scope["method"] == "HEAD")
            return
        if path == SCORE_PATH and scope["method"] == "POST":
            start = time.perf_counter()
            body: bytes | ClientError = b""
            try:
                if self._token is None or self._authorized(scope):
                    # (else the body stays unread and `_answer` says 401: the first `receive`
                    # would send `100 Continue`, inviting an unauthenticated client's body)
                    body = await _read_body(scope, receive, self.options.max_body_bytes)
            except ClientError as err:
                if err.kind == "disconnect":
                    return
                body = err
            if isinstance(body, bytes) and len(body) >= limits.OFFLOAD_BODY_BYTES:
                # a large batch: scored on a worker thread (onnxruntime releases the GIL), so
                # the loop reads, decodes and answers other requests meanwhile
                answer = await asyncio.get_running_loop().run_in_executor(
                    self._offload_pool(), self._answer, scope["headers"], body
                )
            else:
                answer = self._answer(scope["headers"], body)
            status, payload, headers = self._record(answer, start)
            await _send(send, status, payload, headers)
            self.busy_poll.touch()
            return
        if self._token is not None and path not in OPEN_PATHS and not self._authorized(scope):
            self._count(path, 401, "unauthorized")
            await _send(send, 401, UNAUTHORIZED, _UNAUTH_HEADERS)
            return
        await self.api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Start the reload poller at startup; stop it and close the source at shutdown."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._started = time.perf_counter()
                loaded = self.options.load_before_accept
                if loaded:  # uvicorn starts accepting on the socket only after this answer
                    await self._poller.first_load()
                self._poll_task = asyncio.create_task(
                    self._poller.run(loaded=loaded), name="mamlctl-reload"
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._poll_task is not None:
                    self._poll_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._poll_task
                self.holder.source.close()
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _authorized(self, scope: Scope) -> bool:
        return self._token_ok(scope["headers"])

    def _token_ok(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        return self._token is not None and authorized(headers, self._token)

    def _count(self, path: str, status: int, kind: str | None) -> None:
        endpoint = path if path in _KNOWN_PATHS else "other"
        self.metrics.requests.labels(endpoint, str(status)).inc()
        if kind is not None:
            self.metrics.errors.labels(endpoint, kind).inc()

    def _offload_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(limits.OFFLOAD_WORKERS, thread_name_prefix="score")
        return self._pool

    def answer_score(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes | ClientError,
        start: float,
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """The whole ``POST /v1/score`` answer: ``(status, body, headers but the length)``.

        Synchronous and free of ASGI so that the HTTP fast path
        (:mod:`mamlctl.serving.fastpath`) and the ASGI path give byte-identical answers.
        ``body`` is the request body, or the error met reading it (413, bad length).
        ``start`` is the ``perf_counter`` at the start of the request (latency metric).
        """
        return self._record(self._answer(headers, body), start)

    def _record(
        self, answer: _Answer, start: float
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Count ``answer`` (on the event loop's thread: the counters take no lock)."""
        status, payload, rows, kind, out = answer
        self._latency.observe(time.perf_counter() - start)
        if status == 200 and self.metrics.multiprocess:
            # several workers: a scrape reaches one of them, so nothing may wait for a flush
            self._ok.inc()
            self.metrics.rows.inc(rows)
        elif status == 200:
            self._pending_ok += 1
            self._pending_rows += rows
        else:
            self._count(SCORE_PATH, status, kind)
        return status, payload, out

    def _answer(self, headers: Iterable[tuple[bytes, bytes]], body: bytes | ClientError) -> _Answer:
        """``(status, body, rows, error kind, headers)``: no shared state is written, so it
        may run on a worker thread."""
        if self._token is not None and not self._token_ok(headers):
            return 401, UNAUTHORIZED, 0, "unauthorized", _UNAUTH_HEADERS
        status, payload, rows, kind, out = 200, b"", 0, None, _JSON_HEADERS
        try:
            if isinstance(body, ClientError):
                raise body
            state = self.holder.state  # read once: this request finishes on this state
            if not self.holder.ready:
                raise ClientError(503, ["state"], "models are still loading", "not_ready")
            if _is_binary(headers):
                payload, rows = score_binary(state, body, max_batch=self.options.max_batch)
                out = _BINARY_HEADERS
            else:
                items, is_batch = parse(body, max_batch=self.options.max_batch)
                payload, rows = score(state, items, is_batch=is_batch)
        except ClientError as err:
            status, payload, kind, out = err.status, err.body(), err.kind, _JSON_HEADERS
        except Exception:  # a server bug must not kill the worker; the client gets a 500
            log.exception("scoring failed")
            status, kind = 500, "internal"
            payload = b'{"detail":"internal error while scoring (see server log)"}'
            out = _JSON_HEADERS
        return status, payload, rows, kind, out


def _is_binary(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.startswith(BINARY_TYPE)
    return False


_KNOWN_PATHS = frozenset({SCORE_PATH, INVOCATIONS_PATH, *OPEN_PATHS, "/metrics", "/openapi.json"})


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise ClientError(
                    400, ["header", "content-length"], "bad length", "header"
                ) from None
            if declared > limit:
                raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientError(400, ["body"], "client disconnected", "disconnect")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large(limit: int) -> ClientError:
    return ClientError(413, ["body"], f"request body exceeds {limit} bytes", "too_large")


async def _send(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] = _JSON_HEADERS,
    *,
    head: bool = False,
) -> None:
    """The response; ``head``: the headers of the GET answer (its length), no body."""
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def create_app(
    settings: Settings,
    source: ModelSource,
    *,
    options: ServeOptions | None = None,
    shard: Shard | None = None,
) -> ScoringApp:
    """The scoring ASGI app for ``source``'s models, configured by ``settings``/``options``;
    with ``shard``, only the series the shard ring maps to it (:mod:`mamlctl.serving.shards`)."""
    return ScoringApp(settings, source, options or ServeOptions(), shard=shard)


def app_from_env() -> ScoringApp:
    """uvicorn ``--factory`` entry point: settings from the environment, registry source.

    ``MAMLCTL_SERVE_RELOAD_INTERVAL`` sets the poll interval, ``MAMLCTL_SERVE_BUSY_POLL`` the
    busy-poll window in seconds, ``MAMLCTL_SERVE_BATCH_THREADS`` the batch session's
    threads, ``MAMLCTL_SERVE_MAX_FAILED_SHARE`` and ``MAMLCTL_SERVE_ALLOW_EMPTY`` (``1``) the
    readiness rules, ``MAMLCTL_SERVE_LOAD_BEFORE_ACCEPT`` (``1``) the first load inside
    startup, ``MAMLCTL_SERVE_ANNOUNCE`` (and ``..._MARKER``) the startup line's address
    (``mamlctl serve`` passes them all), ``MAMLCTL_SERVE_SHARD`` (``I/N``) with
    ``MAMLCTL_SERVE_SHARD_RING`` (comma-separated) this server's shard, when set.
    """
    import os

    from mamlctl.serving.shards import parse_shard, split_ring
    from mamlctl.serving.source import RegistrySource

    settings = Settings()
    interval = float(os.environ.get("MAMLCTL_SERVE_RELOAD_INTERVAL", "2.0"))
    busy = float(os.environ.get("MAMLCTL_SERVE_BUSY_POLL", limits.DEFAULT_BUSY_POLL))
    threads = int(os.environ.get("MAMLCTL_SERVE_BATCH_THREADS", limits.DEFAULT_BATCH_THREADS))
    share = float(os.environ.get("MAMLCTL_SERVE_MAX_FAILED_SHARE", limits.DEFAULT_MAX_FAILED_SHARE))
    options = ServeOptions(
        reload_interval=interval,
        busy_poll=busy,
        batch_threads=threads,
        max_failed_share=share,
        allow_empty=os.environ.get("MAMLCTL_SERVE_ALLOW_EMPTY", "0") == "1",
        load_before_accept=os.environ.get("MAMLCTL_SERVE_LOAD_BEFORE_ACCEPT", "0") == "1",
        flag=os.environ.get("MAMLCTL_SERVE_FLAG", "rank"),
        announce=os.environ.get("MAMLCTL_SERVE_ANNOUNCE") or None,
        announce_marker=os.environ.get("MAMLCTL_SERVE_ANNOUNCE_MARKER") or None,
    )
    spec = os.environ.get("MAMLCTL_SERVE_SHARD", "")
    ring = split_ring(os.environ.get("MAMLCTL_SERVE_SHARD_RING", ""))
    shard = parse_shard(spec, ring) if spec else None
    return create_app(settings, RegistrySource(settings), options=options, shard=shard)
