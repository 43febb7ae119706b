"""The observe loop's in-memory state: one :class:`Stream` per served series, kept in step
with the serving state (:func:`sync_streams`).

A stream holds what the next observation of its series needs: the model window, run of
flags and ranking state (:class:`~mamlctl.timeseries.stream_detector.StreamState`), the
stored length and last timestamp (order and duplicate checks). It is loaded from the
registry's stored points and anomaly records (:func:`mamlctl.registry.observations.
load_tails`), so a restarted server continues exactly where the last acknowledged
observation left it (the ranking state, which depends on past forecasts, is stored with the
series' counters). The answers to the server's latest observations are kept in one bounded
:class:`RecentAnswers` for all series (a duplicate gets the recorded answer back).

On a reload, a series whose model did not change keeps its stream untouched; a re-adapted
series (new file, same window length L) keeps its window too; a series whose L changed, or
that is newly served, is loaded from the registry; a series no longer served is dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from mamlctl.registry.observations import StoredTail, load_tails
from mamlctl.serving.state import ServingState
from mamlctl.timeseries.stream_detector import (
    DetectorConfig,
    Ranking,
    StreamState,
    ranking_from_json,
    restore_state,
)

#: Answers kept for duplicates, over all series together (the latest ones; an older duplicate
#: is answered from the database with its stored value). One bound for the whole server, so
#: the memory per series does not grow with it: ~1 KB per kept answer.
RECENT_ANSWERS = 4096

Key = datetime | int


@dataclass(slots=True, kw_only=True)
class Stream:
    series_pk: int
    #: True: points carry timestamps (observations give ISO 8601); False: integer positions.
    has_ts: bool | None
    n_points: int
    first_ts: datetime | None
    last_ts: datetime | None
    interval_seconds: float | None
    window: int
    sha256: str
    detector: StreamState

    @property
    def last_key(self) -> Key | None:
        if self.n_points == 0:
            return None
        return self.last_ts if self.has_ts else self.n_points - 1

    def copy(self) -> Stream:
        """A working copy for one request (the window array is replaced, never mutated)."""
        return Stream(
            series_pk=self.series_pk,
            has_ts=self.has_ts,
            n_points=self.n_points,
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            interval_seconds=self.interval_seconds,
            window=self.window,
            sha256=self.sha256,
            detector=self.detector,
        )


class RecentAnswers:
    """The answers to the latest :data:`RECENT_ANSWERS` new observations, by (series, key)."""

    def __init__(self, size: int = RECENT_ANSWERS) -> None:
        self.size = size
        self._answers: OrderedDict[tuple[str, Key], dict[str, Any]] = OrderedDict()

    def get(self, series_id: str, key: Key) -> dict[str, Any] | None:
        return self._answers.get((series_id, key))

    def remember(self, series_id: str, key: Key, answer: dict[str, Any]) -> None:
        self._answers[(series_id, key)] = answer
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)


def stream_of(tail: StoredTail, *, window: int, sha256: str) -> Stream:
    return Stream(
        series_pk=tail.series_pk,
        has_ts=tail.has_ts if tail.n_points else None,
        n_points=tail.n_points,
        first_ts=tail.first_ts,
        last_ts=tail.last_ts,
        interval_seconds=tail.interval_seconds,
        window=window,
        sha256=sha256,
        detector=_float32(
            restore_state(
                tail.values,
                window=window,
                flagged=tail.flagged,
                replacement=tail.replacement,
                ranking=_ranking(tail),
            )
        ),
    )


def _float32(state: StreamState) -> StreamState:
    """The window as the model reads it (float32: the same forecasts, half the memory)."""
    return StreamState(state.window.astype(np.float32), state.run, state.ranking)


def _ranking(tail: StoredTail) -> Ranking:
    """The stored ranking state, else a fresh one over the stored values' range."""
    stored = ranking_from_json(tail.detector_state)
    if stored is not None:
        return stored
    if tail.low <= tail.high:  # not NaN: the series holds values
        return Ranking(low=tail.low, high=tail.high)
    return Ranking()


def tail_length(window: int, config: DetectorConfig) -> int:
    """Stored points read per series: the window, and enough for the run of flags."""
    return max(window, config.max_replaced + 1)


def sync_streams(
    streams: dict[str, Stream],
    state: ServingState,
    factory: sessionmaker[Session],
    config: DetectorConfig,
    *,
    only: set[str] | None = None,
) -> None:
    """Bring ``streams`` in line with ``state`` (see the module docstring), in place; ``only``:
    (re)load just these series from the registry (after a write conflict)."""
    for sid in [s for s in streams if s not in state.entries]:
        del streams[sid]
    load: dict[str, int] = {}
    for sid, entry in state.entries.items():
        stream = streams.get(sid)
        if only is not None and sid in only:
            stream = None
        if stream is None or stream.window != entry.window:
            load[sid] = tail_length(entry.window, config)
        elif stream.sha256 != entry.sha256:
            stream.sha256 = entry.sha256  # re-adapted: same window, new model
    if not load:
        return
    with factory() as session:
        tails = load_tails(session, load)
    for sid, tail in tails.items():
        entry = state.entries[sid]
        streams[sid] = stream_of(tail, window=entry.window, sha256=entry.sha256)
