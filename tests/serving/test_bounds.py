"""Connection bounds of ``mamlctl serve``'s HTTP protocol, over real loopback sockets.

Oracles: the status line the RFCs name (431 / 414 / 408 / 503) followed by the server closing
the connection (``recv`` returns ``b""``); for flow control, the server's own transport stops
reading while its write buffer is over the high-water mark, its write buffer never holds more
than a bounded amount, and the process's RSS grows by less than 20 MB over thousands of
pipelined requests nobody reads; every request is still answered, in order, once read.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import orjson
import pytest
import uvicorn
from conftest import Served

from mamlctl.serving import fastpath
from mamlctl.serving.app import ScoringApp, ServeOptions
from mamlctl.serving.bounds import BoundedHttpProtocol
from mamlctl.serving.fastpath import ScoreHttpProtocol
from mamlctl.serving.limits import ConnectionLimits

LIMITS = ConnectionLimits(
    max_head_bytes=4096, head_timeout=0.4, body_timeout=0.6, max_connections=3
)


class _Probe(ScoreHttpProtocol):
    """The served protocol with small limits; remembers its instances for the assertions."""

    limits: ClassVar[ConnectionLimits | None] = LIMITS
    instances: ClassVar[list[Any]] = []

    received = 0

    def connection_made(self, transport: Any) -> None:
        type(self).instances.append(self)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        super().data_received(data)


def _serve(app: Any, protocol: type) -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=protocol, lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield port
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def live(make_served: Callable[..., Served]) -> Iterator[tuple[Served, int]]:
    s = make_served(options=ServeOptions(reload=False, max_body_bytes=4096))
    _Probe.instances = []
    for port in _serve(s.app, _Probe):
        yield s, port


class _Patient(_Probe):
    """Long deadlines: the flow-control test is about memory, not time."""

    limits: ClassVar[ConnectionLimits | None] = ConnectionLimits(head_timeout=30, body_timeout=30)


@pytest.fixture
def live_patient(make_served: Callable[..., Served]) -> Iterator[tuple[Served, int]]:
    s = make_served(options=ServeOptions(reload=False))
    _Probe.instances = []
    for port in _serve(s.app, _Patient):
        yield s, port


def _status_then_close(sock: socket.socket, timeout: float = 5.0) -> tuple[int, bytes]:
    """The status code of the one response on ``sock``, asserting the server then closes."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(data.split()[1]), body


def _score(series: str = "m0") -> bytes:
    body = orjson.dumps({"series_id": series, "window": [1.0] * 12})
    return (
        b"POST /v1/score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


def test_a_head_over_the_limit_is_431_and_closed(live: tuple[Served, int]) -> None:
    _, port = live
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: " + b"a" * 8000 + b"\r\n\r\n"
        )
        status, body = _status_then_close(sock)
    assert status == 431 and b"4096" in body
    with socket.create_connection(("127.0.0.1", port)) as sock:  # many small headers, never ending
        for i in range(400):
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\n" if i == 0 else b"X-%d: abcdefgh\r\n" % i)
            except OSError:
                break
        assert _status_then_close(sock)[0] == 431


def test_a_url_over_the_limit_is_414_and_closed(live: tuple[Served, int]) -> None:
    _, port = live
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /" + b"u" * 6000)  # the request line never ends
        assert _status_then_close(sock)[0] == 414
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /" + b"u" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _status_then_close(sock)[0] == 414


def test_a_head_just_under_the_limit_is_served(live: tuple[Served, int]) -> None:
    _, port = live
    pad = b"X-Pad: " + b"a" * 3900 + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        # after a scored request, in the same segment: the head after a body is counted alone
        sock.sendall(_score() + b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + pad + b"\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk


def test_a_slow_head_and_a_slow_body_are_408_and_closed(live: tuple[Served, int]) -> None:
    _, port = live
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # and nothing more
        assert _status_then_close(sock)[0] == 408
    assert 0.3 < time.monotonic() - started < 4
    with socket.create_connection(("127.0.0.1", port)) as sock:  # connected, never a byte
        assert _status_then_close(sock)[0] == 408
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_score()[:-5])  # the body's last bytes never come
        assert _status_then_close(sock)[0] == 408
    with socket.create_connection(("127.0.0.1", port)) as sock:  # slowloris: a byte at a time
        for byte in b"GET /healthz HTTP/1.1\r\nHost: t\r\n":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
        assert _status_then_close(sock)[0] == 408


def test_connections_over_the_limit_get_503_and_are_closed(live: tuple[Served, int]) -> None:
    _, port = live
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        for sock in held:  # each in use: a request answered keeps it open
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", port)) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _status_then_close(extra)[0] == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the server notices the three closes
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            if _status_then_close(sock)[0] == 200:
                return
        time.sleep(0.05)
    pytest.fail("connections were not released")


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("path", ["fast", "asgi"])
def test_a_pipelining_client_that_never_reads_is_paused(
    live_patient: tuple[Served, int], path: str
) -> None:
    """Thousands of pipelined requests, nothing read: the server stops reading once its write
    buffer is full, so its memory stays bounded; afterwards every answer arrives in order."""
    _, port = live_patient
    one = _score() if path == "fast" else b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
    n = 30000 if path == "fast" else 20000
    payload = one * n
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window
    sock.connect(("127.0.0.1", port))
    rss_before = _rss_bytes()
    sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
    sender.start()
    deadline, received = time.monotonic() + 30, -1
    while not _Probe.instances and time.monotonic() < deadline:  # accepted (a loaded box: later)
        time.sleep(0.01)
    (server_side,) = _Probe.instances
    while time.monotonic() < deadline:  # until it stopped reading and read nothing for 0.5 s
        if received == server_side.received and not server_side.transport.is_reading():
            break
        received = server_side.received
        time.sleep(0.5)
    buffered = server_side.transport.get_write_buffer_size()
    growth = _rss_bytes() - rss_before
    assert not server_side.transport.is_reading()
    assert received < len(payload), "the server read everything though no answer was read"
    assert buffered < 1 << 20, buffered
    assert growth < 20 << 20, growth
    sock.settimeout(10)
    tail, answered = b"", 0
    while answered < n:  # every answer arrives once the client reads
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {answered} answers"
        tail += chunk
        answered += tail.count(b"HTTP/1.1 200 OK")
        tail = tail[-14:] if not tail.endswith(b"HTTP/1.1 200 OK") else b""
    sender.join(10)
    sock.close()
    print(
        f"\n{path}: server read {received} of {len(payload)} B before pausing; write buffer"
        f" {buffered} B; RSS growth {growth / 2**20:.1f} MiB; {n} answers"
    )


def test_the_fast_path_turns_itself_off_when_uvicorn_changes(
    make_served: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fallback: a uvicorn without an attribute the fast path reads -> the plain ASGI path
    answers every request (same body), still bounded."""
    s = make_served(options=ServeOptions(reload=False))
    monkeypatch.setattr(fastpath, "UVICORN_ATTRIBUTES", (*fastpath.UVICORN_ATTRIBUTES, "gone"))
    calls: list[str] = []
    original = ScoringApp.__call__

    async def counted(self: ScoringApp, scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope.get("path", ""))
        await original(self, scope, receive, send)

    monkeypatch.setattr(ScoringApp, "__call__", counted)
    _Probe.instances = []
    for port in _serve(s.app, _Probe):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(_score().replace(b"Host: t", b"Host: t\r\nConnection: close"))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b'"series_id":"m0"' in data
        assert calls == ["/v1/score"]
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /" + b"u" * 6000)
            assert _status_then_close(sock)[0] == 414


def test_the_plain_bounded_protocol_serves(make_served: Callable[..., Served]) -> None:
    """``BoundedHttpProtocol`` (no fast path, what ``serve`` falls back to) is bounded too."""

    class Plain(BoundedHttpProtocol):
        limits: ClassVar[ConnectionLimits | None] = LIMITS

    s = make_served(options=ServeOptions(reload=False))
    for port in _serve(s.app, Plain):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: " + b"a" * 8000)
            assert _status_then_close(sock)[0] == 431
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def _head(sock: socket.socket) -> bytes:
    """The next response head on ``sock`` (up to its blank line)."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        assert chunk, data
        data += chunk
    return data


@pytest.mark.parametrize(
    "protocol", [ScoreHttpProtocol, BoundedHttpProtocol], ids=["fast", "plain"]
)
@pytest.mark.parametrize("path", [b"/v1/score", b"/invocations", b"/v1/observe"])
def test_expect_100_continue_without_the_token_is_401_and_no_100(
    make_served: Callable[..., Served], protocol: type, path: bytes
) -> None:
    """RFC 9110 15.2.1: a server that will reject the request answers the final status instead
    of ``100 Continue``: an unauthenticated client must not be invited to send its body."""
    s = make_served(token="secret", options=ServeOptions(reload=False))
    body = orjson.dumps({"series_id": "m0", "window": [1.0] * 12})

    def head(auth: bytes) -> bytes:
        return (
            b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\n%sContent-Length: %d\r\n\r\n" % (path, auth, len(body))
        )

    for port in _serve(s.app, protocol):
        for auth in (b"", b"Authorization: Bearer wrong\r\n"):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(head(auth))
                assert _head(sock).startswith(b"HTTP/1.1 401 "), path
        if path != b"/v1/score":
            continue
        with socket.create_connection(("127.0.0.1", port)) as sock:  # the token: invited
            sock.sendall(head(b"Authorization: Bearer secret\r\n"))
            assert _head(sock).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(body)
            assert _head(sock).startswith(b"HTTP/1.1 200 ")
