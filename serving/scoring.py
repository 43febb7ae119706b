"""The scoring hot path: request bytes -> validated items -> one ``run`` per group -> bytes.

Validation is hand-written (it is the documented contract of :mod:`mamlctl.serving.schemas`)
because it runs on every request: JSON parsed by orjson, types checked with C-level set/map
calls, windows converted once per group with numpy. Every client mistake raises
:class:`ClientError` naming the field (FastAPI's ``{"detail": [{"loc", "msg", "type"}]}``
shape); the caller turns it into 404/413/422. Anomaly scores come from
:mod:`mamlctl.timeseries.anomaly`, the one definition of the score and the flag.

A batch answers per item. Structural mistakes (malformed JSON, a body or item that does not
follow the schema, an empty or oversized batch) fail the whole request; the mistakes of one
item against the served models -- an unknown or unloaded series, a window or ``actual`` of the
wrong length, a value that is not finite as float32, a window the model cannot score to finite
numbers -- put ``{"series_id", "error": {"status", "type", "msg", "loc"}}`` in that item's place
(:data:`ITEM_ERROR_KINDS`) while the other items are scored exactly as in a batch without it.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from mamlctl.serving.state import SeriesEntry, ServingState
from mamlctl.timeseries.anomaly import anomaly_score, flag

_ITEM_KEYS = frozenset({"series_id", "window", "actual"})
_NUMBER_TYPES = frozenset({float, int})
_DUMP_OPTS = orjson.OPT_SERIALIZE_NUMPY
_MAX_ID = 512

#: Error types a batch answers in the item's place (the rest fail the whole request).
ITEM_ERROR_KINDS = frozenset(
    {
        "not_found",
        "misdirected",
        "window_length",
        "actual_length",
        "finite_number",
        "model_overflow",
    }
)


class ClientError(Exception):
    """A request the client got wrong: HTTP ``status`` and a JSON-ready ``detail``."""

    def __init__(self, status: int, loc: Sequence[str | int], msg: str, kind: str) -> None:
        super().__init__(msg)
        self.status = status
        self.kind = kind
        self.loc = list(loc)
        self.detail: Any = [{"loc": self.loc, "msg": msg, "type": kind}]

    def body(self) -> bytes:
        return orjson.dumps({"detail": self.detail})

    def item_error(self) -> dict[str, Any]:
        """The ``error`` object of a batch item that failed with this error."""
        return {"status": self.status, "type": self.kind, "msg": str(self), "loc": self.loc}


def _unprocessable(loc: Sequence[str | int], msg: str, kind: str) -> ClientError:
    return ClientError(422, loc, msg, kind)


def not_found(state: ServingState, sid: str, loc: Sequence[str | int]) -> ClientError:
    """The 404 of a series that is not served (unknown, or its model failed to load); on a
    shard, the 421 of a series another shard owns (:mod:`mamlctl.serving.shards`)."""
    shard = state.shard
    if shard is not None and sid and not shard.owns(sid):
        return ClientError(421, loc, shard.misdirected(sid)[:300], "misdirected")
    why = state.failures.get(sid)
    msg = f"unknown series {sid!r}" if why is None else f"series {sid!r} not loaded: {why}"
    return ClientError(404, loc, msg[:300], "not_found")


def overflow(loc: Sequence[str | int]) -> ClientError:
    """A finite window the model turns into non-finite numbers (values far beyond the series'
    scale overflow float32 inside the network)."""
    msg = "the model's forecast for this window is not finite: values too large for the model"
    return _unprocessable([*loc, "window"], msg, "model_overflow")


def parse(body: bytes, *, max_batch: int) -> tuple[list[Any], bool]:
    """``(items, is_batch)`` from a request body; structure only, values checked later."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:  # incl. nesting past orjson's depth limit
        raise _unprocessable(["body"], f"malformed JSON: {err}"[:300], "json_invalid") from None
    if not isinstance(doc, dict):
        raise _unprocessable(["body"], "body must be a JSON object", "object_type")
    if "items" not in doc:
        return [doc], False
    if len(doc) != 1:
        extra = sorted(k for k in doc if k != "items")
        raise _unprocessable(["body", extra[0]], "unknown field in a batch", "extra_forbidden")
    items = doc["items"]
    if not isinstance(items, list):
        raise _unprocessable(["body", "items"], "items must be a list", "list_type")
    if not items:
        raise _unprocessable(["body", "items"], "empty batch: give at least one item", "too_short")
    if len(items) > max_batch:
        raise _unprocessable(
            ["body", "items"], f"batch of {len(items)} items exceeds {max_batch}", "too_long"
        )
    return items, True


def _brief(value: Any) -> str:
    """A short, bounded description of a JSON value (``repr`` of a deeply nested list recurses
    once per level: a RecursionError, and a long message, for a hostile body)."""
    if isinstance(value, list | dict):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    return repr(value)[:80]


def _check_numbers(values: Any, loc: list[str | int], *, name: str) -> list[Any]:
    if not isinstance(values, list):
        raise _unprocessable([*loc, name], f"{name} must be a list of numbers", "list_type")
    kinds = set(map(type, values))
    if not kinds <= _NUMBER_TYPES:
        for j, v in enumerate(values):
            if type(v) not in _NUMBER_TYPES:
                raise _unprocessable(
                    [*loc, name, j], f"{name}[{j}] is not a number: {_brief(v)}", "float_type"
                )
    return values


def _check_shape(item: Any, loc: list[str | int]) -> tuple[str, list[Any], list[Any] | None]:
    """The schema of one item (a mistake here fails the whole request)."""
    if not isinstance(item, dict):
        raise _unprocessable(loc, "item must be an object", "object_type")
    if not item.keys() <= _ITEM_KEYS:
        extra = sorted(k for k in item if k not in _ITEM_KEYS)[0]
        raise _unprocessable([*loc, extra], f"unknown field {extra!r}"[:200], "extra_forbidden")
    sid = item.get("series_id")
    if not isinstance(sid, str) or not sid or len(sid) > _MAX_ID:
        raise _unprocessable(
            [*loc, "series_id"], f"series_id must be a string of 1..{_MAX_ID} chars", "string_type"
        )
    if "window" not in item:
        raise _unprocessable([*loc, "window"], "window is required", "missing")
    window = _check_numbers(item["window"], loc, name="window")
    actual = item.get("actual")
    if actual is not None:
        actual = _check_numbers(actual, loc, name="actual")
    return sid, window, actual


def _check_item(
    state: ServingState, item: Any, loc: list[str | int]
) -> tuple[SeriesEntry, list[Any], list[Any] | None]:
    """Schema first (whole-request errors), then the item against the served models
    (:data:`ITEM_ERROR_KINDS`: per-item errors in a batch)."""
    sid, window, actual = _check_shape(item, loc)
    entry = state.entries.get(sid)
    if entry is None:
        raise not_found(state, sid, [*loc, "series_id"])
    if len(window) != entry.window:
        raise _unprocessable(
            [*loc, "window"],
            f"window has {len(window)} values; series {sid!r} takes {entry.window}"[:300],
            "window_length",
        )
    if actual is not None:
        if not 1 <= len(actual) <= entry.horizon:
            raise _unprocessable(
                [*loc, "actual"],
                f"actual has {len(actual)} values; give 1..{entry.horizon}",
                "actual_length",
            )
        _finite32(actual, loc, name="actual")  # same range rule as windows
    return entry, window, actual


def _finite32(values: Sequence[Any], loc: list[str | int], *, name: str) -> npt.NDArray[Any]:
    try:
        with np.errstate(over="ignore"):
            arr = np.array(values, dtype=np.float32)
    except (OverflowError, ValueError):
        arr = np.array([_to32(v) for v in values], dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise _unprocessable(
            [*loc, name, bad], f"{name}[{bad}] is not finite as float32", "finite_number"
        )
    return arr


def _to32(value: Any) -> float:
    try:
        with np.errstate(over="ignore"):
            return float(np.float32(value))
    except (OverflowError, ValueError):
        return float("inf")


def _windows32(values: list[Any]) -> npt.NDArray[np.float32]:
    with np.errstate(over="ignore"):
        try:
            return np.array(values, dtype=np.float32)
        except (OverflowError, ValueError):  # an int beyond float range: report it below
            return np.full((len(values), 1), np.inf, dtype=np.float32)


def _finite_rows(forecast: npt.NDArray[Any], sigma: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Rows whose forecast and sigma are all finite (a model overflow gives inf or NaN)."""
    return np.isfinite(forecast).all(axis=1) & np.isfinite(sigma).all(axis=1)  # type: ignore[no-any-return]


def _result(
    entry: SeriesEntry, forecast: Any, sigma: Any, actual: list[Any] | None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "series_id": entry.series_id,
        "forecast": forecast,
        "sigma": sigma,
        "residual": None,
        "anomaly_score": None,
        "is_anomaly": None,
        "threshold": entry.threshold,
        "lineage": entry.lineage_json,
    }
    if actual is not None:
        k = len(actual)
        residual = np.array(actual, dtype=np.float64) - forecast[:k].astype(np.float64)
        scores = anomaly_score(residual, sigma[:k])
        result["residual"] = residual
        result["anomaly_score"] = scores
        result["is_anomaly"] = flag(scores, entry.threshold)
    return result


def score(state: ServingState, items: list[Any], *, is_batch: bool) -> tuple[bytes, int]:
    """Validate and score ``items`` against ``state``; ``(response body, rows scored)``."""
    if not is_batch:  # the latency path: no grouping machinery
        base: list[str | int] = ["body"]
        entry, window, actual = _check_item(state, items[0], base)
        windows = _windows32([window])
        if not np.isfinite(windows).all():
            _finite32(window, base, name="window")
        forecast, sigma = state.runtimes[entry.group].run(windows, entry.row_array)
        if not _finite_rows(forecast, sigma)[0]:
            raise overflow(base)
        doc = _result(entry, forecast[0], sigma[0], actual)
        return orjson.dumps(doc, option=_DUMP_OPTS), 1
    return _score_batch(state, items)


def _score_batch(state: ServingState, items: list[Any]) -> tuple[bytes, int]:
    base: list[str | int] = ["body", "items"]
    n = len(items)
    results: list[Any] = [None] * n
    checked: list[tuple[int, SeriesEntry, list[Any], list[Any] | None]] = []
    for i, item in enumerate(items):
        try:
            entry, window, actual = _check_item(state, item, [*base, i])
        except ClientError as err:
            if err.kind not in ITEM_ERROR_KINDS:
                raise
            results[i] = {"series_id": item["series_id"], "error": err.item_error()}
            continue
        checked.append((i, entry, window, actual))
    scored = 0
    for idx, group in _groups([c[1] for c in checked]):
        rows_of = [checked[k] for k in idx]
        windows = _windows32([c[2] for c in rows_of])
        if not np.isfinite(windows).all():
            rows_of, windows = _drop_non_finite(rows_of, results, base)
            if not rows_of:
                continue
        rows = np.fromiter((c[1].row for c in rows_of), dtype=np.int64, count=len(rows_of))
        forecast, sigma = state.runtimes[group].run(windows, rows)
        ok = _finite_rows(forecast, sigma)
        for k, (i, entry, _, actual) in enumerate(rows_of):
            if ok[k]:
                results[i] = _result(entry, forecast[k], sigma[k], actual)
                scored += 1
            else:
                results[i] = {
                    "series_id": entry.series_id,
                    "error": overflow([*base, i]).item_error(),
                }
    return orjson.dumps({"results": results}, option=_DUMP_OPTS), scored


def _drop_non_finite(
    rows_of: list[tuple[int, SeriesEntry, list[Any], list[Any] | None]],
    results: list[Any],
    base: list[str | int],
) -> tuple[list[tuple[int, SeriesEntry, list[Any], list[Any] | None]], npt.NDArray[np.float32]]:
    """The rows whose windows are finite as float32 (and their windows); the others get their
    error entry in ``results``, naming the first offending value."""
    keep = []
    for row in rows_of:
        i, entry, window, _ = row
        try:
            _finite32(window, [*base, i], name="window")
        except ClientError as err:
            results[i] = {"series_id": entry.series_id, "error": err.item_error()}
            continue
        keep.append(row)
    windows = _windows32([c[2] for c in keep]) if keep else np.empty((0, 0), np.float32)
    return keep, windows


def _groups(entries: Sequence[SeriesEntry]) -> list[tuple[list[int], int]]:
    """``[(item indices, runtime group)]``, groups in order of first appearance."""
    by_group: dict[int, list[int]] = {}
    for i, entry in enumerate(entries):
        by_group.setdefault(entry.group, []).append(i)
    return [(idx, group) for group, idx in by_group.items()]


_ROW = operator.attrgetter("row")
_GROUP = operator.attrgetter("group")


def run_groups(
    state: ServingState,
    entries: Sequence[SeriesEntry],
    windows: npt.NDArray[np.float32],
    *,
    positions: Sequence[int] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``(forecast [n, H], sigma [n, H])`` for ``windows [n, L]`` of ``entries``: one ``run``
    per runtime group. All groups must share H (422 otherwise: the binary format's rule);
    ``positions[k]`` is row k's index in the request (the error's ``loc``), default k."""
    n = len(entries)
    rows = np.fromiter(map(_ROW, entries), dtype=np.int64, count=n)  # map: no Python step per row
    groups_seen = set(map(_GROUP, entries))
    if len(groups_seen) == 1:
        return state.runtimes[groups_seen.pop()].run(windows, rows)
    groups = _groups(entries)
    forecast: npt.NDArray[np.float32] | None = None
    sigma: npt.NDArray[np.float32] | None = None
    for idx, group in groups:
        take = np.array(idx, dtype=np.int64)
        f, s = state.runtimes[group].run(np.ascontiguousarray(windows[take]), rows[take])
        if forecast is None or sigma is None:
            forecast = np.empty((n, f.shape[1]), dtype=np.float32)
            sigma = np.empty((n, s.shape[1]), dtype=np.float32)
        elif f.shape[1] != forecast.shape[1]:
            raise _unprocessable(
                ["body", "items", idx[0] if positions is None else positions[idx[0]], "series_id"],
                "a binary batch must not mix series with different horizons",
                "horizon_mix",
            )
        forecast[take] = f
        sigma[take] = s
    assert forecast is not None and sigma is not None
    return forecast, sigma


def series_detail(state: ServingState, series_id: str) -> dict[str, Any]:
    """The ``GET /v1/series/{id}`` document; unknown series raise a 404 ClientError."""
    entry = state.entries.get(series_id)
    if entry is None:
        raise not_found(state, series_id, ["path", "series_id"])
    return {
        "series_id": entry.series_id,
        "family": entry.family,
        "window": entry.window,
        "horizon": entry.horizon,
        "threshold": entry.threshold,
        "residual_scale": entry.residual_scale,
        "served_by": state.runtimes[entry.group].kind,
        "lineage": entry.lineage,
        "load_error": entry.load_error,
    }
