"""``POST /v1/observe``: observations in, anomalies out, state kept by the service.

Body: ``{"series_id", "timestamp", "value"}`` or ``{"items": [...]}`` (up to ``max_batch``).
``timestamp`` is an ISO 8601 string for a series stored with timestamps (naive = UTC, an offset
is converted to UTC) or the integer position for a series stored by positions.

Per observation, in request order: check it; score ``value`` against the one-step forecast
(column 0 of the series' current model's ``forecast``/``sigma``, the runtime ``/v1/score`` uses)
made from the series' window *before* it (:mod:`mamlctl.timeseries.stream_detector`); append it.
Answer (``status``):

* ``scored``: ``forecast``, ``sigma``, ``residual``, ``z``, ``anomaly_score``, ``magnitude``,
  ``is_anomaly``, ``threshold_z``, the ranking score's ``anomaly_likelihood``, ``out_of_range``
  and ``rank_score`` (one scale across series, for ranking and sweeps), ``position``, ``gap``,
  ``anomaly_id`` (the record of a flagged one) and the model ``lineage``;
* ``warming_up``: the series holds fewer than L points: stored, not scored;
* ``duplicate``: the series already holds this timestamp with this value: nothing is stored
  again; the recorded answer comes back if the server still holds it (the latest
  :data:`~mamlctl.serving.streams.RECENT_ANSWERS` of all series), else the stored value.

Per-item errors (``{"series_id", "timestamp", "error": {"status", "type", "msg", "loc"}}``; a
single observation answers the status itself), the rest of a batch is processed as without it:
``not_found`` 404 (series not served); 422 for a body that breaks the schema, a value that is
not a finite float32 number (``finite_number``; JSON has no NaN: ``null``/strings fail as
``float_type``), a timestamp of the wrong kind or format, a position past the next one
(``position_gap``: positions are dense), or a model that cannot forecast this window
(``model_overflow``); 409 for a timestamp older than the last that the series does not hold
(``out_of_order``) or holds with another value (``conflict``).

Gaps: a timestamped observation more than one interval after the last is accepted; ``gap`` is
the number of missing intervals (``round(dt / interval) - 1``, null when the series has no
known interval); nothing is imputed: the window simply continues with the new value.

Durability: the request's points, series counters and anomaly records are written in ONE
transaction (bulk statements, :func:`mamlctl.registry.observations.write_observations`),
committed before the answer is built; memory is updated only after the commit, so what was
acknowledged is stored and what was not stored was not acknowledged. Requests are serialised
by one lock (one process owns the streams; sharding across workers is not done).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mamlctl.registry.observations import NewPoint, SeriesCounters, find_points, write_observations
from mamlctl.serving.observe_items import (
    Cursor,
    Item,
    advance,
    answer_duplicate,
    check,
    classify,
    error_answer,
    is_full,
    item_error,
    ts_out,
)
from mamlctl.serving.scoring import ClientError
from mamlctl.serving.state import ServingState
from mamlctl.serving.streams import RecentAnswers, Stream, sync_streams
from mamlctl.timeseries.stream_detector import (
    DetectorConfig,
    StreamState,
    append,
    observe_range,
    ranking_to_json,
    step,
    threshold_z,
)

log = logging.getLogger("mamlctl.serving")


class Observer:
    """The streams of every served series and the ``POST /v1/observe`` request path."""

    def __init__(self, factory: sessionmaker[Session], config: DetectorConfig | None = None):
        self.factory = factory
        self.config = config or DetectorConfig()
        self.streams: dict[str, Stream] = {}
        self.recent = RecentAnswers()
        self._thresholds: dict[float, float] = {}
        self._generation = -1
        self._lock = threading.Lock()

    def sync(self, state: ServingState) -> None:
        """Follow a new serving state (blocking: run it off the event loop)."""
        with self._lock:
            self._sync(state)

    def _sync(self, state: ServingState, only: set[str] | None = None) -> None:
        if only is None and state.generation == self._generation:
            return
        sync_streams(self.streams, state, self.factory, self.config, only=only)
        self._generation = state.generation

    def observe(
        self, state: ServingState, items: list[Any], *, is_batch: bool
    ) -> tuple[bytes, Counter[str]]:
        """The answer body and the anomalies flagged by family (blocking: database writes).

        A single observation's error raises its :class:`ClientError`; a database failure
        raises ``SQLAlchemyError`` with nothing stored and nothing changed in memory."""
        with self._lock:
            self._sync(state)
            try:
                answers, flagged = self._attempt(state, items, is_batch)
            except IntegrityError:  # points stored meanwhile by another writer: reload, retry
                log.warning("observe: series changed in the registry meanwhile; reloading them")
                touched = {i.get("series_id") for i in items if isinstance(i, dict)}
                self._sync(state, {s for s in touched if isinstance(s, str)})
                answers, flagged = self._attempt(state, items, is_batch)
        if not is_batch:
            error = answers[0].get("error")
            if error is not None:
                raise ClientError(error["status"], error["loc"], error["msg"], error["type"])
            return orjson.dumps(answers[0]), flagged
        return orjson.dumps({"results": answers}), flagged

    def _attempt(
        self, state: ServingState, raw_items: list[Any], is_batch: bool
    ) -> tuple[list[dict[str, Any]], Counter[str]]:
        base: list[str | int] = ["body", "items"] if is_batch else ["body"]
        work: dict[str, Stream] = {}
        cursors: dict[str, Cursor] = {}
        items: list[Item] = []
        for i, raw in enumerate(raw_items):
            item = Item(i, [*base, i] if is_batch else base)
            items.append(item)
            try:
                stream = check(item, raw, state, self.streams)
                assert item.sid is not None
                if item.sid not in work:
                    work[item.sid] = stream.copy()
                    cursors[item.sid] = Cursor(stream.n_points, stream.last_key)
                classify(item, cursors[item.sid], stream.interval_seconds)
            except ClientError as err:
                item.kind, item.answer = "error", error_answer(item, err)
        self._score_rounds(state, items, work)
        self._duplicates(items, work)
        flagged = self._persist(items, work)
        self.streams.update(work)  # committed: the working streams become the served ones
        for item in items:
            if item.kind == "new" and item.answer is not None:
                self.recent.remember(item.sid, item.key, item.answer)  # type: ignore[arg-type]
        return [i.answer or {} for i in items], flagged

    def _score_rounds(
        self, state: ServingState, items: list[Item], work: dict[str, Stream]
    ) -> None:
        """Round r holds the r-th new observation of each series: its forecasts come from one
        ``run`` per runtime group, then the detector steps; round r+1 sees their windows."""
        new = [i for i in items if i.kind == "new"]
        for r in range(max((i.round for i in new), default=-1) + 1):
            this = [i for i in new if i.round == r and i.kind == "new"]
            full = [i for i in this if is_full(work[i.sid])]  # type: ignore[index]
            forecasts = _forecast(state, full, work)
            for item in this:
                stream = work[item.sid]  # type: ignore[index]
                assert item.key is not None
                if isinstance(item.key, int) and item.key != stream.n_points:
                    # an earlier observation of this series failed: positions stay dense
                    msg = f"position {item.key} skips ahead: the next is {stream.n_points}"
                    err = item_error(422, [*item.loc, "timestamp"], msg, "position_gap")
                    item.kind, item.answer = "error", error_answer(item, err)
                    continue
                got = forecasts.get(item.index)
                if got is None and is_full(stream):
                    msg = "the model's forecast for this window is not finite"
                    err = item_error(422, [*item.loc, "series_id"], msg, "model_overflow")
                    item.kind, item.answer = "error", error_answer(item, err)
                    continue
                self._step(item, stream, got)

    def _step(self, item: Item, stream: Stream, got: tuple[float, float] | None) -> None:
        entry = item.entry
        assert entry is not None and item.key is not None
        position = advance(stream, item.key)
        head = {"series_id": item.sid, "timestamp": ts_out(item.key), "position": position}
        if got is None:  # fewer than L points: stored, not scored
            grown = append(stream.detector.window, item.value, length=stream.window)
            ranking = observe_range(stream.detector.ranking, item.value)
            stream.detector = StreamState(grown, 0, ranking)
            item.answer = {**head, "status": "warming_up", "value": item.value, "gap": item.gap}
            item.answer["lineage"] = entry.lineage_json
            return
        z_thr = self._thresholds.get(entry.threshold)
        if z_thr is None:  # one per distinct calibrated threshold, not per observation
            z_thr = self._thresholds[entry.threshold] = threshold_z(entry.threshold, self.config)
        stream.detector, v = step(
            stream.detector,
            item.value,
            *got,
            z_threshold=z_thr,
            scale=entry.scale,
            config=self.config,
        )
        item.answer = {
            **head,
            "status": "scored",
            "value": v.value,
            "forecast": v.forecast,
            "sigma": v.sigma,
            "residual": v.residual,
            "z": v.z,
            "anomaly_score": v.anomaly_score,
            "magnitude": v.magnitude,
            "is_anomaly": v.is_anomaly,
            "threshold_z": z_thr,
            "anomaly_likelihood": v.anomaly_likelihood,
            "out_of_range": v.out_of_range,
            "rank_score": v.rank_score,
            "gap": item.gap,
            "anomaly_id": None,
            "lineage": entry.lineage_json,
        }
        if v.is_anomaly:
            item.anomaly = {
                "series_pk": stream.series_pk,
                "position": position,
                "ts": item.key if isinstance(item.key, datetime) else None,
                "value": v.value,
                "forecast": v.forecast,
                "sigma": v.sigma,
                "z": v.z,
                "score": v.anomaly_score,
                "magnitude": v.magnitude,
                "replaced": v.replaced,
                "registered_model": entry.registered_model,
                "initializer_version": entry.initializer_version,
                "model_sha256": entry.sha256,
            }

    def _duplicates(self, items: list[Item], work: dict[str, Stream]) -> None:
        """Answer the items whose timestamp the series already holds (or never will)."""
        in_batch = {(i.sid, i.key): i for i in items if i.kind == "new"}
        old: list[Item] = []
        for item in items:
            if item.kind != "dup":
                continue
            done = in_batch.get((item.sid, item.key))
            recorded = done.answer if done is not None else self.recent.get(item.sid, item.key)  # type: ignore[arg-type]
            if recorded is not None and "error" not in recorded:
                answer_duplicate(item, recorded.get("value"), recorded)
            elif recorded is not None:
                item.answer = {**recorded, "timestamp": ts_out(item.key)}
            else:
                old.append(item)
        if not old:
            return
        with self.factory() as session:
            stored = find_points(
                session,
                [(work[i.sid].series_pk, i.key) for i in old],  # type: ignore[index,misc]
            )
        for item in old:
            value = stored.get((work[item.sid].series_pk, item.key))  # type: ignore[index,arg-type]
            if value is None:
                msg = "timestamp is older than the series' last one and not stored: rejected"
                item.answer = error_answer(
                    item, item_error(409, [*item.loc, "timestamp"], msg, "out_of_order")
                )
            else:
                answer_duplicate(item, value, None)

    def _persist(self, items: list[Item], work: dict[str, Stream]) -> Counter[str]:
        """One transaction: every new point, the series counters, the anomaly records."""
        new = [i for i in items if i.kind == "new"]
        if not new:
            return Counter()
        points = [
            NewPoint(
                series_pk=work[i.sid].series_pk,  # type: ignore[index]
                position=i.answer["position"],  # type: ignore[index]
                ts=i.key if isinstance(i.key, datetime) else None,
                value=i.value,
            )
            for i in new
        ]
        counters = [
            SeriesCounters(
                series_pk=s.series_pk,
                n_points=s.n_points,
                first_ts=s.first_ts,
                last_ts=s.last_ts,
                detector_state=ranking_to_json(s.detector.ranking),
            )
            for s in work.values()
        ]
        flagged = [i for i in new if i.anomaly is not None]
        with self.factory.begin() as session:
            ids = write_observations(session, points, counters, [i.anomaly for i in flagged])  # type: ignore[misc]
        for item, anomaly_id in zip(flagged, ids, strict=True):
            item.answer["anomaly_id"] = anomaly_id  # type: ignore[index]
        return Counter(i.entry.family for i in flagged)  # type: ignore[union-attr]


def _forecast(
    state: ServingState, ready: list[Item], work: dict[str, Stream]
) -> dict[int, tuple[float, float]]:
    """``{item index: (forecast, sigma)}`` of step 1, one ``run`` per runtime group; items
    whose model gives a non-finite or non-positive pair are left out."""
    out: dict[int, tuple[float, float]] = {}
    groups: dict[int, list[Item]] = {}
    for item in ready:
        groups.setdefault(item.entry.group, []).append(item)  # type: ignore[union-attr]
    for group, members in groups.items():
        windows = np.array([work[m.sid].detector.window for m in members], dtype=np.float32)  # type: ignore[index]
        rows = np.array([m.entry.row for m in members], dtype=np.int64)  # type: ignore[union-attr]
        forecast, sigma = state.runtimes[group].run(windows, rows)
        for k, m in enumerate(members):
            f, s = float(forecast[k, 0]), float(sigma[k, 0])
            if np.isfinite(f) and np.isfinite(s) and s > 0:
                out[m.index] = (f, s)
    return out


def make_observer(source: Any, config: DetectorConfig | None = None) -> Observer | None:
    """The observe loop over ``source``'s registry database; None for other sources."""
    engine = getattr(source, "engine", None)
    if engine is None:
        return None
    from sqlalchemy.orm import sessionmaker

    return Observer(sessionmaker(engine, expire_on_commit=False), config)


def sync_observer(outer: Any) -> None:
    """Bring the streams in line with the served state (poller thread, after each reload):
    a failure is logged and retried at the next poll or observe request."""
    if outer.observer is None or not outer.holder.ready:
        return
    try:
        outer.observer.sync(outer.holder.state)
    except Exception as err:
        outer.log_store_error(err)
