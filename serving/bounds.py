"""Connection bounds for the scoring server's HTTP protocol.

:class:`HttpBounds` is a mixin placed before an httptools-based ``asyncio.Protocol`` (uvicorn's
``HttpToolsProtocol`` or :class:`mamlctl.serving.fastpath.ScoreHttpProtocol`). It relies only
on the ``asyncio.Protocol``/``Transport`` interfaces and httptools' public parser-callback
names (``on_message_begin``, ``on_url``, ``on_header``, ``on_headers_complete``, ``on_body``,
``on_message_complete``), never on uvicorn's attributes, and holds every connection to:

* **head size**: a request line + headers over ``max_head_bytes`` is answered 431 (414 when the
  URL alone is over it) and the connection closed. httptools buffers a header until it ends, so
  the parser is fed a head at a time (up to its blank line, never more than the limit allows)
  and a body of known length at a time: an unfinished head is refused as soon as it is over
  the limit, and the next pipelined request is not parsed while the protocol holds one back
  (uvicorn pauses reading for it). Chunked bodies go in :data:`SLICE`-byte pieces (a head right
  after one, in the same piece, may be over-counted by up to that much).
* **deadlines**: from connecting, or from a head's first byte, to the head's end
  ``head_timeout`` seconds; from there to the body's end ``body_timeout``; else 408 and close.
  While the server itself is not reading (flow control below) the clock does not run out.
* **connections**: past ``max_connections`` open connections of this server, the new one is
  answered 503 on its first bytes and closed.
* **write flow control**: when the transport's write buffer is over its high-water mark
  (``pause_writing``), the connection stops reading and stops parsing what it already read,
  until ``resume_writing``: a pipelining client that never reads holds at most one read's
  worth of requests and one high-water mark of answers in the server. The reading switch is a
  :class:`ReadGate` in front of the transport, so the protocol's own pauses (uvicorn pauses
  reading while a pipelined request waits) and this one do not undo each other.
"""

from __future__ import annotations

import asyncio
import http
import os
from collections.abc import Callable
from typing import Any, ClassVar, cast

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mamlctl.serving.limits import ConnectionLimits

#: Piece fed to the parser from a body of unknown (chunked) length.
SLICE = 16 << 10

_APP, _WRITE, _BACKLOG = "app", "write", "backlog"


class ReadGate(asyncio.Transport):
    """A transport that reads only while no one asked it to pause. Reasons: the protocol's own
    ``pause_reading``/``resume_reading``, the bounds' write flow control, and a backlog (bytes
    read but not parsed yet): the socket is read again only once the backlog is parsed."""

    def __init__(self, transport: asyncio.Transport, on_unblocked: Callable[[], None]) -> None:
        super().__init__()
        self.inner = transport
        self._reasons: set[str] = set()
        self._on_unblocked = on_unblocked

    @property
    def blocked(self) -> bool:
        """Parsing must wait (a reason other than the backlog)."""
        return bool(self._reasons - {_BACKLOG})

    def pause(self, reason: str) -> None:
        if not self._reasons and not self.inner.is_closing():
            self.inner.pause_reading()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if self._reasons == {_BACKLOG}:
            self._on_unblocked()
        elif not self._reasons and not self.inner.is_closing():
            self.inner.resume_reading()

    def pause_reading(self) -> None:
        self.pause(_APP)

    def resume_reading(self) -> None:
        self.resume(_APP)

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def write(self, data: Any) -> None:
        self.inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.inner.writelines(list_of_data)

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def write_eof(self) -> None:
        self.inner.write_eof()

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner.get_protocol()


def refusal(status: int, detail: str) -> bytes:
    """A complete ``connection: close`` response with a JSON ``{"detail": ...}`` body."""
    body = orjson.dumps({"detail": detail})
    phrase = http.HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class HttpBounds(asyncio.Protocol):
    """The bounds of the module docstring, as a mixin before an httptools protocol."""

    #: Limits for every connection; ``None``: from ``MAMLCTL_SERVE_*`` (``mamlctl serve``).
    limits: ClassVar[ConnectionLimits | None] = None

    #: Open connections of each server (keyed by the ``server_state`` uvicorn passes).
    _open: ClassVar[dict[int, int]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bounds = type(self).limits or ConnectionLimits.from_env(os.environ)
        self._gate: ReadGate | None = None
        self._server_key = id(args[1] if len(args) > 1 else kwargs.get("server_state"))
        self._counted = False
        self._over = False
        self._refuse: tuple[int, str] | None = None
        self._pending = b""
        self._head_open = False
        self._head_bytes = 0
        self._url_bytes = 0
        self._head_exact = 0
        self._line_done = False
        self._in_body = False
        self._body_left: int | None = None
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio subclass
        self._gate = ReadGate(transport, on_unblocked=self._unblocked)
        open_now = type(self)._open.get(self._server_key, 0) + 1
        type(self)._open[self._server_key] = open_now
        self._counted = True
        self._over = open_now > self._bounds.max_connections
        super().connection_made(self._gate)
        self._arm(self._bounds.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._counted:
            self._counted = False
            left = type(self)._open.get(self._server_key, 1) - 1
            if left:
                type(self)._open[self._server_key] = left
            else:
                type(self)._open.pop(self._server_key, None)
        self._pending = b""
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        if self._gate is not None:
            self._gate.pause(_WRITE)
        super().pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._gate is not None:
            self._gate.resume(_WRITE)

    def _unblocked(self) -> None:
        """Nothing but the backlog holds parsing up: parse it on the next turn of the loop
        (not inside the protocol's or the transport's own callback)."""
        asyncio.get_running_loop().call_soon(self._feed)

    def data_received(self, data: bytes) -> None:
        if self._gate is None or self._gate.is_closing():
            return
        if self._over:
            self._close_with(503, "too many open connections: try again later")
            return
        self._pending = self._pending + data if self._pending else data
        self._feed()

    # ------------------------------------------------------------------ feeding the parser

    def _feed(self) -> None:
        """Feed what was read to the parser a piece at a time (a head up to its blank line, a
        body of known length, else :data:`SLICE` bytes) until done or something blocks."""
        gate = self._gate
        if gate is None:
            return
        buf = self._pending
        self._pending = b""
        view = memoryview(buf)
        limit = self._bounds.max_head_bytes
        at = 0
        while at < len(buf):
            if gate.is_closing():
                return
            if gate.blocked:  # keep the rest (and read no more) until the client reads its
                self._pending = buf[at:]  # answers or the pipelined request is done
                gate.pause(_BACKLOG)
                return
            if self._in_body:
                end = at + (self._body_left or SLICE)
            else:  # a head: up to its blank line, or one byte over what is left of the limit
                budget = max(0, limit - self._head_bytes)
                blank = buf.find(b"\r\n\r\n", at, at + budget + 4)
                end = blank + 4 if blank >= 0 else at + budget + 1
            piece = view[at:end]
            start, at = at, at + len(piece)
            super().data_received(piece)  # type: ignore[arg-type]
            if self._refuse is None and self._head_open:
                self._head_bytes += len(piece)
                self._line_done = self._line_done or buf.find(b"\n", start, at) >= 0
                self._check_open_head()
            if self._refuse is not None:
                self._close_with(*self._refuse)
                return
        gate.resume(_BACKLOG)

    def _check_open_head(self) -> None:
        limit = self._bounds.max_head_bytes
        if self._url_bytes > limit or (self._head_bytes > limit and not self._line_done):
            self._refuse = (414, f"request URL over {limit} bytes")
        elif self._head_bytes > limit:
            self._refuse = (431, f"request head over {limit} bytes")

    def _close_with(self, status: int, detail: str) -> None:
        self._disarm()
        self._pending = b""
        gate = self._gate
        if gate is not None and not gate.is_closing():
            gate.write(refusal(status, detail))
            gate.close()

    # ------------------------------------------------------------------ deadlines

    def _arm(self, seconds: float) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self._expired, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, seconds: float) -> None:
        self._timer = None
        gate = self._gate
        if gate is None or gate.is_closing():
            return
        if not gate.is_reading() or self._pending:  # the server is the one holding it up
            self._arm(seconds)
            return
        what = "body" if self._in_body else "request head"
        self._close_with(408, f"{what} not received within {seconds:g} s")

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._head_open = True
        self._head_bytes = 0
        self._url_bytes = 0
        self._head_exact = 0
        self._line_done = False
        self._body_left = None
        self._refuse = None
        if self._timer is None:
            self._arm(self._bounds.head_timeout)
        super().on_message_begin()  # type: ignore[misc]

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        super().on_url(url)  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_exact += len(name) + len(value) + 4
        if name.lower() == b"content-length" and value.isdigit():
            self._body_left = int(value)
        super().on_header(name, value)  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        self._head_open = False
        limit = self._bounds.max_head_bytes
        if self._url_bytes > limit:
            self._refuse = (414, f"request URL over {limit} bytes")
        elif self._url_bytes + self._head_exact + 16 > limit:  # "GET  HTTP/1.1\r\n" + "\r\n"
            self._refuse = (431, f"request head over {limit} bytes")
        if self._refuse is not None:
            return
        self._in_body = True
        self._arm(self._bounds.body_timeout)
        super().on_headers_complete()  # type: ignore[misc]

    def on_body(self, body: bytes) -> None:
        if self._refuse is not None:
            return
        if self._body_left is not None:
            self._body_left = max(0, self._body_left - len(body))
        super().on_body(body)  # type: ignore[misc]

    def on_message_complete(self) -> None:
        if self._refuse is not None:
            return
        self._in_body = False
        self._body_left = None
        self._disarm()
        super().on_message_complete()  # type: ignore[misc]


class BoundedHttpProtocol(HttpBounds, HttpToolsProtocol):
    """uvicorn's httptools protocol held to the bounds: what ``mamlctl serve`` runs when the
    fast path cannot (:func:`mamlctl.serving.fastpath.protocol_path`)."""
