"""Following promotion: the loop behind ``mamlctl watch``.

Each family's alias (``champion``) is polled in the MLflow registry; when it points at another
version than the one serving (moved forward, or back = rollback), the family's series are
re-adapted from exactly that version and the scoring server hot-reloads from the registry DB.

The loop is pure apart from three injected seams, so tests drive it without real time:

* ``connect() -> AliasSource``: (re)opens the MLflow store; may raise
  :class:`~mamlctl.errors.TrackingUnavailableError`;
* ``follower: Follower``: what serves now (registry DB) and the re-adaptation itself;
* ``clock`` / ``sleep``: monotonic seconds and a sleep that may return early (webhook wake-up).

**Scheduled re-adaptation** (``readapt_every_s``, ``watch --readapt-every 1d``): while the
alias has not moved, the loop asks the follower to re-adapt, from the served version, every
series of the family whose model is older than ``readapt_every_s`` (the adapt stage's
``stale_after``; series observed since hold new points, so their models follow the data's
rhythm). It checks on its first poll (catching up after a stop, or from cron with ``--once``)
and then every ``readapt_every_s / 10`` (at least the poll interval), so a model is re-adapted
between 1 and 1.1 periods after its last adaptation. The server swaps the new files in and
keeps each series' window and detector state.

Failure rules (issue 8):

* tracking server unreachable (while resolving or while loading the version) -> one warning per
  outage, exponential backoff between attempts, one info line when it answers again; the
  alias is re-read after recovery, so a version that could not be loaded is never adapted from;
* any other re-adaptation failure -> one error line; the adaptation job records rows only after
  all files are written, so the previous models keep serving; that version is not retried
  until the alias moves again (or ``watch`` restarts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mamlctl.domain import CHAMPION, InitializerRef
from mamlctl.errors import ConfigError, MamlctlError, NotFoundError, TrackingUnavailableError

log = logging.getLogger("mamlctl.watch")


class AliasSource(Protocol):
    """The part of the MLflow store the loop reads."""

    def resolve_alias(self, family: str, alias: str = CHAMPION) -> InitializerRef: ...


class Follower(Protocol):
    """The serving side: which initializer serves a family now, and re-adapting from another.

    An initializer is identified by its MLflow run id: a registered model deleted and created
    again restarts its version numbers, so "v1" may name two different initializers."""

    def served(self, family: str) -> tuple[str, int] | None:
        """(run id, version) of the initializer every current model of ``family`` came from."""

    def readapt(self, family: str, ref: InitializerRef) -> int:
        """Re-adapt ``family``'s series from ``ref``; returns the number of series adapted."""
        ...

    def refresh(self, family: str, ref: InitializerRef, older_than_s: float) -> int:
        """Re-adapt from ``ref`` (the served version) the series whose model is older than
        ``older_than_s`` seconds; returns the number of series adapted."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff: ``initial_s * factor**(attempt-1)``, capped at ``max_s``."""

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.factor < 1 or self.max_s < self.initial_s:
            raise ConfigError(
                f"invalid backoff: initial {self.initial_s} s must be > 0, factor "
                f"{self.factor} >= 1 and max {self.max_s} s >= initial"
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure (1-based)."""
        return float(min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1)))


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    """Something the loop did; ``kind`` is one of :data:`EVENT_KINDS`."""

    kind: str
    at: float
    family: str | None = None
    version: int | None = None
    previous: int | None = None
    adapted: int | None = None
    message: str = ""


EVENT_KINDS = (
    "promoted",  # alias moved to a newer version, re-adapted
    "rolled_back",  # alias moved to an older (or previously served) version, re-adapted
    "adapt_failed",  # re-adaptation failed; previous models keep serving
    "readapted",  # scheduled re-adaptation of the served version's stale series
    "no_alias",  # the family has no version with the alias
    "outage",  # the tracking server stopped answering (once per outage)
    "recovered",  # it answers again
)


@dataclass(slots=True)
class _FamilyState:
    served: str | None  # run id of the initializer served
    served_version: int | None = None
    seen: set[str] = field(default_factory=set)  # run ids
    failed: str | None = None  # run whose re-adaptation failed (not retried)
    no_alias_logged: bool = False
    next_refresh: float | None = None  # clock time of the next scheduled re-adaptation check


class WatchLoop:
    """Poll aliases, re-adapt on a move, back off while the tracking server is away."""

    def __init__(
        self,
        *,
        connect: Callable[[], AliasSource],
        follower: Follower,
        families: Sequence[str] | Callable[[], Sequence[str]],
        alias: str = CHAMPION,
        interval_s: float = 5.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        on_event: Callable[[WatchEvent], None] | None = None,
        readapt_every_s: float | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ConfigError(f"watch interval must be positive, got {interval_s}")
        if readapt_every_s is not None and not readapt_every_s > 0:
            raise ConfigError(f"re-adaptation period must be positive, got {readapt_every_s}")
        self.readapt_every_s = readapt_every_s
        self._connect = connect
        self._follower = follower
        self._families = families
        self.alias = alias
        self.interval_s = interval_s
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._sleep = sleep
        self._on_event = on_event
        self._source: AliasSource | None = None
        self._state: dict[str, _FamilyState] = {}
        self._outage_since: float | None = None
        self._failures = 0
        self.events: list[WatchEvent] = []

    # --- state seen by callers and tests ----------------------------------------------------
    @property
    def in_outage(self) -> bool:
        return self._outage_since is not None

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def served(self, family: str) -> int | None:
        """The version number served (for display; the identity is the run id)."""
        state = self._state.get(family)
        return state.served_version if state else None

    def next_delay(self) -> float:
        """Seconds until the next poll: the interval, or the backoff during an outage."""
        return self.backoff.delay(self._failures) if self.in_outage else self.interval_s

    # --- the loop ---------------------------------------------------------------------------
    def run(
        self, *, should_stop: Callable[[], bool] = lambda: False, max_polls: int | None = None
    ) -> None:
        """Poll until ``should_stop()`` (checked after each sleep) or ``max_polls`` polls."""
        polls = 0
        while not should_stop():
            self.poll_once()
            polls += 1
            if max_polls is not None and polls >= max_polls:
                return
            self._sleep(self.next_delay())

    def poll_once(self) -> list[WatchEvent]:
        """One pass over every family; returns the events it produced."""
        start = len(self.events)
        try:
            source = self._source if self._source is not None else self._connect()
            self._source = source
            families = self._families() if callable(self._families) else self._families
            for family in families:
                self._poll_family(source, family)
        except TrackingUnavailableError as err:
            self._source = None
            self._failures += 1
            if self._outage_since is None:
                self._outage_since = self._clock()
                self._emit(
                    "outage",
                    message=f"{err}; retrying with backoff (next in "
                    f"{self.backoff.delay(self._failures):g} s, at most "
                    f"{self.backoff.max_s:g} s apart)",
                    level=logging.WARNING,
                )
        else:
            self._answered()
        return self.events[start:]

    def _answered(self) -> None:
        """The tracking server answered: end the outage (one info line) and reset backoff."""
        if self._outage_since is not None:
            down = self._clock() - self._outage_since
            self._emit(
                "recovered",
                message=f"MLflow tracking server answers again after {down:.1f} s "
                f"({self._failures} failed attempt(s))",
                level=logging.INFO,
            )
        self._outage_since = None
        self._failures = 0

    def _poll_family(self, source: AliasSource, family: str) -> None:
        state = self._state.get(family)
        if state is None:
            served = self._follower.served(family)
            if served is None:
                state = self._state[family] = _FamilyState(served=None)
            else:
                state = self._state[family] = _FamilyState(
                    served=served[0], served_version=served[1], seen={served[0]}
                )
        try:
            ref = source.resolve_alias(family, self.alias)
        except NotFoundError as err:
            self._answered()
            if not state.no_alias_logged:
                state.no_alias_logged = True
                self._emit("no_alias", family=family, message=str(err), level=logging.WARNING)
            return
        self._answered()
        state.no_alias_logged = False
        if ref.run_id == state.served:
            state.failed = None
            self._maybe_refresh(family, ref, state)
            return
        if ref.run_id == state.failed:
            return  # already reported; wait for the alias to move again
        previous = state.served_version
        rollback = ref.run_id in state.seen
        try:
            adapted = self._follower.readapt(family, ref)
        except TrackingUnavailableError:
            raise  # could not load the version: nothing adapted; retried after recovery
        except MamlctlError as err:
            state.failed = ref.run_id
            self._emit(
                "adapt_failed",
                family=family,
                version=ref.version,
                previous=previous,
                message=f"re-adapting {family} from {ref.registered_model} v{ref.version} "
                f"failed: {err}; still serving "
                + (f"v{previous}" if previous is not None else "no model"),
                level=logging.ERROR,
            )
            return
        state.served = ref.run_id
        state.served_version = ref.version
        state.failed = None
        state.seen.add(ref.run_id)
        kind = "rolled_back" if rollback else "promoted"
        self._emit(
            kind,
            family=family,
            version=ref.version,
            previous=previous,
            adapted=adapted,
            message=f"{family}: {self.alias} {'rolled back' if rollback else 'moved'} "
            f"v{previous if previous is not None else '-'} -> v{ref.version}; "
            f"{adapted} series re-adapted, the server reloads them",
            level=logging.INFO,
        )

    def _maybe_refresh(self, family: str, ref: InitializerRef, state: _FamilyState) -> None:
        """Scheduled re-adaptation of the served version's stale series (module docstring)."""
        period = self.readapt_every_s
        now = self._clock()
        if period is None or (state.next_refresh is not None and now < state.next_refresh):
            return
        state.next_refresh = now + max(period / 10.0, self.interval_s)
        try:
            adapted = self._follower.refresh(family, ref, period)
        except TrackingUnavailableError:
            state.next_refresh = None  # retried after recovery
            raise
        except MamlctlError as err:
            self._emit(
                "adapt_failed",
                family=family,
                version=ref.version,
                previous=ref.version,
                message=f"scheduled re-adaptation of {family} from {ref.registered_model} "
                f"v{ref.version} failed: {err}; the current models keep serving",
                level=logging.ERROR,
            )
            return
        if adapted:
            self._emit(
                "readapted",
                family=family,
                version=ref.version,
                previous=ref.version,
                adapted=adapted,
                message=f"{family}: {adapted} series re-adapted from v{ref.version} (models "
                f"older than {period:g} s), the server reloads them",
                level=logging.INFO,
            )

    def _emit(
        self,
        kind: str,
        *,
        level: int,
        family: str | None = None,
        version: int | None = None,
        previous: int | None = None,
        adapted: int | None = None,
        message: str = "",
    ) -> None:
        event = WatchEvent(
            kind=kind,
            at=self._clock(),
            family=family,
            version=version,
            previous=previous,
            adapted=adapted,
            message=message,
        )
        self.events.append(event)
        log.log(level, "%s", message)
        if self._on_event is not None:
            self._on_event(event)
