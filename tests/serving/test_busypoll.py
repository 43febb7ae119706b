"""Adaptive busy polling: the loop polls for ``window`` seconds after an answer, then sleeps."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.serving.app import ServeOptions
from mamlctl.serving.busypoll import MAX_WINDOW, BusyPoll


async def _spins_after_touch(poll: BusyPoll, wait: float) -> tuple[int, bool]:
    poll.touch()
    await asyncio.sleep(wait)
    return poll.spins, poll._spinning


def test_loop_polls_for_the_window_then_stops() -> None:
    poll = BusyPoll(0.005)
    cpu = time.process_time()
    spins, spinning = asyncio.run(_spins_after_touch(poll, 0.05))
    cpu = time.process_time() - cpu
    assert not spinning  # stopped: the loop slept for the rest of the 50 ms
    assert spins > 50  # one loop iteration is ~1-3 us: a 5 ms window is hundreds of them
    assert cpu < 0.035  # 5 ms of polling (+ the loop's start), not 50 ms of it


def test_a_zero_window_never_spins() -> None:
    poll = BusyPoll(0.0)
    spins, spinning = asyncio.run(_spins_after_touch(poll, 0.01))
    assert (spins, spinning) == (0, False)


def test_touch_while_spinning_extends_the_window_without_a_second_spinner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a controlled clock (the property, not the machine's scheduling, is under test): a
    second touch 3 ms into a 4 ms window keeps the one spinner going until 4 ms after it."""
    import types

    import mamlctl.serving.busypoll as busypoll

    now = [0.0]
    monkeypatch.setattr(busypoll, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    async def turns(n: int = 20) -> None:  # let the loop run n iterations
        for _ in range(n):
            await asyncio.sleep(0)

    async def main() -> tuple[int, bool, bool, bool]:
        poll = BusyPoll(0.004)
        poll.touch()
        now[0] = 0.003
        await turns()
        poll.touch()  # the window restarts from here; still one callback in the queue
        queued = sum(1 for h in asyncio.get_running_loop()._ready if "_spin" in repr(h))  # type: ignore[attr-defined]
        now[0] = 0.005  # 5 ms after the first touch, 2 ms after the second
        await turns()
        still = poll._spinning
        now[0] = 0.0071  # past the second window
        await turns()
        return queued, still, poll._spinning, poll.spins > 0

    queued, still, after, spun = asyncio.run(main())
    assert queued <= 1
    assert still and not after and spun


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=-1.0, max_value=1.0, allow_nan=False))
def test_window_bounds(window: float) -> None:
    if 0 <= window <= MAX_WINDOW:
        assert BusyPoll(window).window == window
        assert ServeOptions(busy_poll=window).busy_poll == window
    else:
        with pytest.raises(ValueError):
            BusyPoll(window)
        with pytest.raises(ValueError):
            ServeOptions(busy_poll=window)
