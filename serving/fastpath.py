"""uvicorn's httptools protocol with ``POST /v1/score`` answered straight from the parser.

``mamlctl serve`` runs uvicorn with ``http="mamlctl.serving.fastpath:ScoreHttpProtocol"``.
For every request but one kind this *is* uvicorn's ``HttpToolsProtocol`` (the ASGI app sees the
usual scope and messages). A ``POST /v1/score`` on HTTP/1.1, with no ASGI request of the same
connection still in flight and no ``Expect: 100-continue``, is answered synchronously in the
parser callback by :meth:`ScoringApp.answer_score` -- the very function the ASGI path calls, so
both paths give byte-identical responses -- and written to the transport as one buffer.

Why: uvicorn's per-request machinery (scope dict, ``RequestResponseCycle``, an asyncio task,
``receive``/``send`` message dicts, header validation) costs ~60 us of CPU per request on this
machine, more than scoring one row; this path costs a few microseconds. Scoring was already
synchronous on the event loop (no ``await`` between reading the body and answering), so
nothing about concurrency changes. Bodies declared at ``OFFLOAD_BODY_BYTES`` or more (large
batches) take the ASGI path, which scores them on a worker thread while the loop goes on.

Every connection is held to :mod:`mamlctl.serving.bounds` (head size, deadlines, connection
count, write flow control), which uses no uvicorn internals. The fast path itself reads
uvicorn's per-request attributes (:data:`UVICORN_ATTRIBUTES`); a connection whose protocol
lacks one of them (a uvicorn that changed) runs without the fast path, every request through
the ASGI app, and says so once in the log. ``mamlctl serve`` falls back to
:class:`mamlctl.serving.bounds.BoundedHttpProtocol` when this module cannot be imported.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from mamlctl.serving.app import SCORE_PATH, ScoringApp, too_large
from mamlctl.serving.bounds import HttpBounds
from mamlctl.serving.limits import OFFLOAD_BODY_BYTES

#: uvicorn ``HttpToolsProtocol`` attributes the fast path reads or calls, checked on each new
#: connection (``url`` and ``headers`` once a message began).
UVICORN_ATTRIBUTES = (
    "app",
    "parser",
    "cycle",
    "pipeline",
    "expect_100_continue",
    "server_state",
    "transport",
    "loop",
    "timeout_keep_alive",
    "timeout_keep_alive_handler",
    "_unset_keepalive_if_required",
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
)
_log = logging.getLogger("mamlctl.serving")
_warned: list[bool] = []

_SCORE_URL = SCORE_PATH.encode()
_POST = b"POST"


def _scoring_app(app: Any) -> ScoringApp | None:
    """The :class:`ScoringApp` under uvicorn's wrappers (proxy headers, ...), if any."""
    for _ in range(8):
        if isinstance(app, ScoringApp):
            return app
        app = getattr(app, "app", None)
    return None


def _large(headers: list[tuple[bytes, bytes]]) -> bool:
    """A declared body of at least ``OFFLOAD_BODY_BYTES``: the ASGI path scores it on a worker
    thread, so the loop is not held for the length of a large batch."""
    for name, value in headers:
        if name == b"content-length":
            return value.isdigit() and int(value) >= OFFLOAD_BODY_BYTES
    return False


def _uvicorn_compatible(protocol: object) -> bool:
    """Whether ``protocol`` has every attribute the fast path uses (logged once if not)."""
    missing = [name for name in UVICORN_ATTRIBUTES if not hasattr(protocol, name)]
    if missing and not _warned:
        _warned.append(True)
        _log.warning("uvicorn changed (no %s): /v1/score served without the fast path", missing)
    return not missing


class _FastScoreProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` plus the synchronous ``POST /v1/score`` path (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = getattr(self, "app", None)
        self._scoring = _scoring_app(app) if _uvicorn_compatible(self) else None
        self._limit = self._scoring.options.max_body_bytes if self._scoring else 0
        self._fast = False
        self._chunks: list[bytes] = []
        self._size = 0
        self._started = 0.0

    def on_message_begin(self) -> None:
        self._fast = False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if (
            self._scoring is not None
            and self.url == _SCORE_URL
            and self.parser.get_method() == _POST
            and not self.expect_100_continue
            and self.parser.get_http_version() == "1.1"
            and (self.cycle is None or self.cycle.response_complete)
            and not _large(self.headers)
        ):
            self._fast = True
            self._chunks = []
            self._size = 0
            self._started = time.perf_counter()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._fast:
            super().on_body(body)
            return
        self._size += len(body)
        if self._size <= self._limit:
            self._chunks.append(body)
        else:
            self._chunks = []  # keep reading (the answer is 413) without keeping the bytes

    def on_message_complete(self) -> None:
        if not self._fast:
            super().on_message_complete()
            return
        self._fast = False
        scoring = self._scoring
        assert scoring is not None
        chunks = self._chunks
        self._chunks = []
        if self._size > self._limit:
            body: Any = too_large(self._limit)
        else:
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        status, payload, headers = scoring.answer_score(self.headers, body, self._started)
        keep_alive = self.parser.should_keep_alive()
        head = [STATUS_LINE[status], b"content-length: ", str(len(payload)).encode(), b"\r\n"]
        for name, value in (*self.server_state.default_headers, *headers):
            head += [name, b": ", value, b"\r\n"]
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", payload]
        self.transport.write(b"".join(head))
        scoring.busy_poll.touch()
        if not keep_alive:
            self.transport.close()
            return
        self.server_state.total_requests += 1
        if not self.transport.is_closing() and not self.pipeline:
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )


class ScoreHttpProtocol(HttpBounds, _FastScoreProtocol):
    """What ``mamlctl serve`` runs: the fast path, every connection held to the bounds."""
