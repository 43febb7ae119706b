"""Adaptive busy polling: keep the event loop spinning for a short window after each answer.

On this kind of machine (a VM whose idle vCPUs halt at once: ``haltpoll.guest_halt_poll_ns=0``)
a process that blocks in ``epoll_wait`` between two requests pays a wake-up of its vCPU when the
next one arrives: measured on loopback with a bare uvloop protocol, a round trip takes 54 us
with the server blocking and 22 us with it spinning (wrk, one connection). The wake-up is the
largest single cost of a single-row request.

:class:`BusyPoll` removes it the way kernel busy polling (``net.core.busy_poll``) and polling
reactors do, but only while traffic flows: after each answer it keeps one callback re-queued
with ``call_soon`` for ``window`` seconds, so the loop polls its sockets with a zero timeout
instead of sleeping. When no request comes within the window the callback stops and the loop
blocks as usual, so an idle server costs nothing; a server answering a request every ``gap``
seconds spends at most ``min(window, gap)`` of extra CPU per request. ``window = 0`` turns it
off (``mamlctl serve --busy-poll 0``).
"""

from __future__ import annotations

import asyncio
import time

from mamlctl.serving.limits import DEFAULT_BUSY_POLL as DEFAULT_WINDOW
from mamlctl.serving.limits import MAX_BUSY_POLL as MAX_WINDOW

__all__ = ["DEFAULT_WINDOW", "MAX_WINDOW", "BusyPoll"]


class BusyPoll:
    """Spin the running loop for ``window`` seconds after the last :meth:`touch`."""

    __slots__ = ("_last", "_loop", "_spinning", "spins", "window")

    def __init__(self, window: float) -> None:
        if not 0 <= window <= MAX_WINDOW:
            raise ValueError(f"busy-poll window must be in [0, {MAX_WINDOW}] s, got {window}")
        self.window = window
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last = 0.0
        self._spinning = False
        self.spins = 0  # loop iterations spent polling (tests, diagnostics)

    def touch(self) -> None:
        """A request was just answered: poll (don't sleep) for the next ``window`` seconds."""
        if not self.window:
            return
        self._last = time.perf_counter()
        if not self._spinning:
            self._loop = loop = asyncio.get_running_loop()
            self._spinning = True
            loop.call_soon(self._spin)

    def _spin(self) -> None:
        if time.perf_counter() - self._last < self.window:
            self.spins += 1
            self._loop.call_soon(self._spin)  # type: ignore[union-attr]
        else:
            self._spinning = False
