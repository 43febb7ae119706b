"""One observation of ``POST /v1/observe`` through its checks and classification (see
:mod:`mamlctl.serving.observe` for the contract): the schema, the served series, the timestamp's
kind and order, new or duplicate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from mamlctl.serving.scoring import ClientError, not_found
from mamlctl.serving.state import SeriesEntry, ServingState
from mamlctl.serving.streams import Key, Stream

_KEYS = frozenset({"series_id", "timestamp", "value"})
_F32_MAX = float(np.finfo(np.float32).max)


def item_error(status: int, loc: list[str | int], msg: str, kind: str) -> ClientError:
    return ClientError(status, loc, msg[:300], kind)


@dataclass(slots=True)
class Item:
    """One observation through the request: what it is, then its answer."""

    index: int
    loc: list[str | int]
    sid: str | None = None
    key: Key | None = None
    value: float = 0.0
    entry: SeriesEntry | None = None
    kind: str = ""  # "new" | "dup" | "error"
    round: int = 0
    gap: int | None = None
    answer: dict[str, Any] | None = None
    anomaly: dict[str, Any] | None = None


@dataclass(slots=True)
class Cursor:
    """Where a series stands while a request's items are classified (before scoring)."""

    n: int
    last: Key | None
    rounds: int = 0


def parse_ts(raw: Any, loc: list[str | int], has_ts: bool | None) -> Key:
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise item_error(
            422, loc, "timestamp must be an ISO 8601 string or an integer", "type_error"
        )
    if isinstance(raw, int):
        if has_ts:
            msg = "this series is stored with timestamps: give an ISO 8601 string"
            raise item_error(422, loc, msg, "timestamp_type")
        if raw < 0:
            raise item_error(422, loc, "a position must be >= 0", "timestamp_range")
        return raw
    if has_ts is False:
        msg = "this series is stored by integer positions: give the position"
        raise item_error(422, loc, msg, "timestamp_type")
    try:
        ts = datetime.fromisoformat(raw)
    except ValueError:
        msg = f"timestamp {raw[:40]!r} is not ISO 8601"
        raise item_error(422, loc, msg, "timestamp_format") from None
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


def check(item: Item, raw: Any, state: ServingState, streams: dict[str, Stream]) -> Stream:
    """Schema and served-series checks of one observation; raises :class:`ClientError`."""
    loc = item.loc
    if not isinstance(raw, dict):
        raise item_error(422, loc, "an observation must be an object", "object_type")
    if isinstance(raw.get("series_id"), str):
        item.sid = raw["series_id"]
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise item_error(
            422, [*loc, unknown[0]], f"unknown field {unknown[0]!r}", "extra_forbidden"
        )
    missing = sorted(_KEYS - raw.keys())
    if missing:
        raise item_error(422, [*loc, missing[0]], f"{missing[0]} is required", "missing")
    sid = raw["series_id"]
    if not isinstance(sid, str) or not sid:
        raise item_error(
            422, [*loc, "series_id"], "series_id must be a non-empty string", "string_type"
        )
    value = raw["value"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"value must be a number, got {'null' if value is None else type(value).__name__}"
        raise item_error(422, [*loc, "value"], msg, "float_type")
    try:
        item.value = float(value)
    except OverflowError:  # an integer past float range
        item.value = float("inf")
    if not (np.isfinite(item.value) and abs(item.value) <= _F32_MAX):
        raise item_error(
            422, [*loc, "value"], "value is not a finite float32 number", "finite_number"
        )
    entry = state.entries.get(sid)
    stream = streams.get(sid)
    if entry is None or stream is None:
        raise not_found(state, sid, [*loc, "series_id"])
    item.entry = entry
    item.key = parse_ts(raw["timestamp"], [*loc, "timestamp"], stream.has_ts)
    return stream


def classify(item: Item, cursor: Cursor, interval: float | None) -> None:
    """New (to append) or duplicate (the key is not after the last one)."""
    key, last = item.key, cursor.last
    assert key is not None
    if last is not None and (type(key) is not type(last) or key <= last):  # type: ignore[operator]
        item.kind = "dup"
        return
    if isinstance(key, int) and key != cursor.n:
        msg = f"position {key} skips ahead: the next position is {cursor.n}"
        raise item_error(422, [*item.loc, "timestamp"], msg, "position_gap")
    item.gap = 0
    if isinstance(key, datetime) and isinstance(last, datetime):
        seconds = (key - last).total_seconds()
        item.gap = max(0, round(seconds / interval) - 1) if interval else None
    cursor.n += 1
    cursor.last = key
    item.kind, item.round = "new", cursor.rounds
    cursor.rounds += 1


def error_answer(item: Item, err: ClientError) -> dict[str, Any]:
    return {"series_id": item.sid, "timestamp": ts_out(item.key), "error": err.item_error()}


def ts_out(key: Key | None) -> str | int | None:
    return key.isoformat() if isinstance(key, datetime) else key


def advance(stream: Stream, key: Key) -> int:
    """Append ``key`` to the working stream's counters; its position."""
    position = stream.n_points
    stream.n_points += 1
    if isinstance(key, datetime):
        stream.has_ts = True
        stream.last_ts = key
        stream.first_ts = stream.first_ts or key
    else:
        stream.has_ts = False
    return position


def is_full(stream: Stream) -> bool:
    return stream.detector.window.shape[0] >= stream.window


def answer_duplicate(item: Item, value: Any, recorded: dict[str, Any] | None) -> None:
    if value != item.value:
        msg = f"the series holds {value!r} at this timestamp, not {item.value!r}"
        item.answer = error_answer(item, item_error(409, [*item.loc, "value"], msg, "conflict"))
        return
    base = recorded or {"series_id": item.sid, "timestamp": ts_out(item.key), "value": value}
    item.answer = {**base, "status": "duplicate"}
