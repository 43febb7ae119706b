"""The watch loop against in-memory fakes (no MLflow, no clock): every rule of issue 8 with
exact counts of re-adaptations, log lines and backoff delays."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mamlctl.domain import InitializerRef
from mamlctl.errors import (
    ConfigError,
    NotFoundError,
    TrackingUnavailableError,
    TrainingError,
)
from mamlctl.registry.promotion_watch import Backoff, WatchLoop


@dataclass
class FakeRegistry:
    """Aliases per family; ``down`` makes every call fail like an unreachable server."""

    aliases: dict[str, int] = field(default_factory=dict)
    down: bool = False
    connects: int = 0

    def connect(self) -> FakeRegistry:
        self.connects += 1
        if self.down:
            raise TrackingUnavailableError("MLflow tracking server at http://x is unreachable")
        return self

    def resolve_alias(self, family: str, alias: str = "champion") -> InitializerRef:
        if self.down:
            raise TrackingUnavailableError("MLflow tracking server at http://x stopped answering")
        if family not in self.aliases:
            raise NotFoundError(f"no version of maml-{family} has alias '{alias}'")
        v = self.aliases[family]
        return InitializerRef(
            family=family, registered_model=f"maml-{family}", version=v, run_id=f"r{v}"
        )


@dataclass
class FakeFollower:
    registry: FakeRegistry
    serving: dict[str, int | None] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    fail_versions: set[int] = field(default_factory=set)
    unloadable: set[int] = field(default_factory=set)

    def served(self, family: str) -> tuple[str, int] | None:
        v = self.serving.get(family)
        return None if v is None else (f"r{v}", v)  # FakeRegistry's run ids

    refreshes: list[tuple[str, int, float]] = field(default_factory=list)
    #: models per family, each with the (fake) clock time it was adapted at
    adapted_at: dict[str, list[float]] = field(default_factory=dict)
    clock: FakeTime | None = None
    refresh_fails: bool = False
    renewals: list[float] = field(default_factory=list)  # model age when re-adapted

    def refresh(self, family: str, ref: InitializerRef, older_than_s: float) -> int:
        """Re-adapt the models older than ``older_than_s`` (the adapt stage's stale_after)."""
        assert self.clock is not None and self.serving.get(family) == ref.version
        self.refreshes.append((family, ref.version, self.clock.now))
        if self.refresh_fails:
            raise TrainingError("adaptation diverged")
        stamps = self.adapted_at.setdefault(family, [])
        stale = [i for i, t in enumerate(stamps) if t < self.clock.now - older_than_s]
        for i in stale:
            self.renewals.append(self.clock.now - stamps[i])
            stamps[i] = self.clock.now
        return len(stale)

    def readapt(self, family: str, ref: InitializerRef) -> int:
        self.calls.append((family, ref.version))
        if ref.version in self.unloadable:
            raise TrackingUnavailableError("download of the initializer failed: connection reset")
        if ref.version in self.fail_versions:
            raise TrainingError("adaptation diverged")
        self.serving[family] = ref.version
        return 3


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_loop(
    registry: FakeRegistry,
    follower: FakeFollower,
    t: FakeTime,
    families: tuple[str, ...] = ("a",),
    readapt_every_s: float | None = None,
) -> WatchLoop:
    return WatchLoop(
        connect=registry.connect,
        follower=follower,
        families=families,
        interval_s=5.0,
        backoff=Backoff(initial_s=1.0, factor=2.0, max_s=8.0),
        clock=t.clock,
        sleep=t.sleep,
        readapt_every_s=readapt_every_s,
    )


def kinds(loop: WatchLoop) -> list[str]:
    return [e.kind for e in loop.events]


def test_alias_move_triggers_exactly_one_readaptation() -> None:
    reg = FakeRegistry(aliases={"a": 1})
    fol = FakeFollower(reg, serving={"a": 1})
    loop = make_loop(reg, fol, FakeTime())
    loop.run(max_polls=3)
    assert fol.calls == [] and loop.events == []  # already serving the champion
    reg.aliases["a"] = 2
    loop.run(max_polls=4)
    assert fol.calls == [("a", 2)]
    assert kinds(loop) == ["promoted"]
    event = loop.events[0]
    assert (event.family, event.previous, event.version, event.adapted) == ("a", 1, 2, 3)
    assert loop.served("a") == 2


def test_rollback_readapts_from_the_older_version() -> None:
    reg = FakeRegistry(aliases={"a": 1})
    fol = FakeFollower(reg, serving={"a": 1})
    loop = make_loop(reg, fol, FakeTime())
    loop.poll_once()
    reg.aliases["a"] = 2
    loop.poll_once()
    reg.aliases["a"] = 1
    loop.poll_once()
    loop.poll_once()
    assert fol.calls == [("a", 2), ("a", 1)]
    assert kinds(loop) == ["promoted", "rolled_back"]
    assert fol.serving["a"] == 1


def test_first_poll_catches_up_a_family_without_models() -> None:
    reg = FakeRegistry(aliases={"a": 4, "b": 2})
    fol = FakeFollower(reg, serving={"b": 2})
    loop = make_loop(reg, fol, FakeTime(), families=("a", "b"))
    loop.poll_once()
    assert fol.calls == [("a", 4)]


def test_outage_backs_off_logs_once_and_never_readapts(caplog: pytest.LogCaptureFixture) -> None:
    reg = FakeRegistry(aliases={"a": 1})
    fol = FakeFollower(reg, serving={"a": 1})
    t = FakeTime()
    loop = make_loop(reg, fol, t)
    loop.poll_once()
    caplog.set_level(logging.INFO, logger="mamlctl.watch")
    reg.down = True
    reg.aliases["a"] = 2  # moved while the server is away: not observable, not adapted
    loop.run(max_polls=7)
    assert fol.calls == []
    assert kinds(loop) == ["outage"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retrying with backoff" in warnings[0].getMessage()
    # exponential backoff, capped at max_s: 1, 2, 4, 8, 8, 8 (after the 6 failed polls)
    assert t.sleeps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert loop.in_outage and loop.consecutive_failures == 7
    reg.down = False
    loop.poll_once()
    assert kinds(loop) == ["outage", "recovered", "promoted"]
    assert fol.calls == [("a", 2)]
    assert "after 31.0 s (7 failed attempt(s))" in loop.events[1].message
    assert not loop.in_outage and loop.next_delay() == 5.0
    # a second outage is reported again, once
    reg.down = True
    loop.run(max_polls=3)
    assert kinds(loop).count("outage") == 2


def test_version_that_could_not_be_loaded_is_not_adapted_until_recovery() -> None:
    reg = FakeRegistry(aliases={"a": 1})
    fol = FakeFollower(reg, serving={"a": 1}, unloadable={2})
    t = FakeTime()
    loop = make_loop(reg, fol, t)
    reg.aliases["a"] = 2
    loop.poll_once()
    assert fol.serving["a"] == 1 and loop.served("a") == 1
    assert kinds(loop) == ["outage"] and loop.in_outage
    # the alias moves on before the store recovers: v2 is never adapted from
    reg.aliases["a"] = 3
    loop.poll_once()
    assert fol.calls == [("a", 2), ("a", 3)]
    assert fol.serving["a"] == 3
    assert kinds(loop) == ["outage", "recovered", "promoted"]


def test_failed_readaptation_keeps_previous_models_and_is_not_retried() -> None:
    reg = FakeRegistry(aliases={"a": 1})
    fol = FakeFollower(reg, serving={"a": 1}, fail_versions={2})
    loop = make_loop(reg, fol, FakeTime())
    reg.aliases["a"] = 2
    loop.run(max_polls=5)
    assert fol.calls == [("a", 2)]  # once, not once per poll
    assert kinds(loop) == ["adapt_failed"]
    assert "still serving v1" in loop.events[0].message
    assert fol.serving["a"] == 1 and loop.served("a") == 1
    reg.aliases["a"] = 3
    loop.poll_once()
    assert fol.calls == [("a", 2), ("a", 3)] and fol.serving["a"] == 3
    reg.aliases["a"] = 2  # moved back to the failed version: tried again (maybe fixed since)
    fol.fail_versions.clear()
    loop.poll_once()
    assert fol.calls[-1] == ("a", 2) and fol.serving["a"] == 2


def test_missing_alias_is_reported_once() -> None:
    reg = FakeRegistry(aliases={})
    fol = FakeFollower(reg)
    loop = make_loop(reg, fol, FakeTime())
    loop.run(max_polls=4)
    assert kinds(loop) == ["no_alias"] and fol.calls == []
    reg.aliases["a"] = 1
    loop.poll_once()
    assert fol.calls == [("a", 1)]


@given(
    initial=st.floats(0.01, 10),
    factor=st.floats(1, 4),
    cap=st.floats(10, 120),
    attempts=st.integers(1, 60),
)
def test_backoff_is_monotone_and_capped(
    initial: float, factor: float, cap: float, attempts: int
) -> None:
    b = Backoff(initial_s=initial, factor=factor, max_s=cap)
    delays = [b.delay(k) for k in range(1, attempts + 1)]
    assert delays[0] == pytest.approx(initial)
    assert all(x <= y for x, y in itertools.pairwise(delays))
    assert max(delays) <= cap


def test_invalid_backoff_and_interval() -> None:
    with pytest.raises(ConfigError):
        Backoff(initial_s=0)
    with pytest.raises(ConfigError):
        WatchLoop(
            connect=FakeRegistry().connect,
            follower=FakeFollower(FakeRegistry()),
            families=(),
            interval_s=0,
        )


DAY = 86400.0


def test_scheduled_readaptation_renews_every_model_within_one_tenth_of_a_period() -> None:
    """``--readapt-every 1d``: checked at the first poll and every period / 10; each model is
    re-adapted between 1 and 1.1 days after its last adaptation, from the served version."""
    t = FakeTime()
    reg = FakeRegistry(aliases={"a": 1})
    fol = FakeFollower(reg, serving={"a": 1}, clock=t)
    fol.adapted_at["a"] = [-2 * DAY, -0.5 * DAY, 0.0]  # one stale at start, two fresh
    loop = make_loop(reg, fol, t, readapt_every_s=DAY)
    loop.run(max_polls=1)
    assert fol.refreshes == [("a", 1, 0.0)] and fol.adapted_at["a"] == [0.0, -0.5 * DAY, 0.0]
    assert kinds(loop) == ["readapted"] and loop.events[0].adapted == 1
    loop.run(max_polls=int(3 * DAY / 5))  # three days of 5 s polls
    checks = [when for _, _, when in fol.refreshes]
    assert all(b - a == pytest.approx(DAY / 10) for a, b in itertools.pairwise(checks))
    assert len(checks) == 30  # at 0, then every 0.1 day up to 2.9 days
    assert fol.calls == []  # the alias never moved: no promotion re-adaptation
    # after the catch-up at 0, every model is renewed 1 to 1.1 days after its last adaptation
    assert fol.renewals[0] == 2 * DAY
    assert all(DAY < age <= 1.1 * DAY + 1e-6 for age in fol.renewals[1:])
    events = [e for e in loop.events if e.kind == "readapted"]
    assert sum(e.adapted or 0 for e in events) == len(fol.renewals) == 8
    assert all(t.now - stamp <= 1.1 * DAY for stamp in fol.adapted_at["a"])


def test_scheduled_readaptation_is_off_by_default_and_failures_keep_serving() -> None:
    t = FakeTime()
    reg = FakeRegistry(aliases={"a": 1})
    fol = FakeFollower(reg, serving={"a": 1}, clock=t, adapted_at={"a": [-5 * DAY]})
    make_loop(reg, fol, t).run(max_polls=100)
    assert fol.refreshes == []
    fol.refresh_fails = True
    loop = make_loop(reg, fol, t, readapt_every_s=DAY)
    loop.run(max_polls=2)
    assert kinds(loop) == ["adapt_failed"] and fol.serving["a"] == 1
    assert "scheduled re-adaptation" in loop.events[0].message
    with pytest.raises(ConfigError, match="re-adaptation period"):
        make_loop(reg, fol, t, readapt_every_s=0.0)
