"""The scoring hot path: request bytes -> validated items -> one ``run`` per group -> bytes.

Validation is hand-written (it is the documented contract of :mod:`mamlctl.serving.schemas`)
because it runs on every request: JSON parsed by orjson, types checked with C-level set/map
calls, windows converted once per group with numpy. Every client mistake raises
:class:`ClientError` naming the field (FastAPI's ``{"detail": [{"loc", "msg", "type"}]}``
shape); the caller turns it into 404/413/422. Anomaly scores come from
:mod:`mamlctl.timeseries.anomaly`, the one definition of the score and the flag.
"""

from __future__ import annotations

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


class ClientError(Exception):
    """A request the client got wrong: HTTP ``status`` and a JSON-ready ``detail``."""

    def __init__(self, status: int, loc: Sequence[str | int], msg: str, kind: str) -> None:
        super().__init__(msg)
        self.status = status
        self.kind = kind
        self.detail: Any = [{"loc": list(loc), "msg": msg, "type": kind}]

    def body(self) -> bytes:
        return orjson.dumps({"detail": self.detail})


def _unprocessable(loc: Sequence[str | int], msg: str, kind: str) -> ClientError:
    return ClientError(422, loc, msg, kind)


def parse(body: bytes, *, max_batch: int) -> tuple[list[Any], bool]:
    """``(items, is_batch)`` from a request body; structure only, values checked later."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise _unprocessable(["body"], f"malformed JSON: {err}", "json_invalid") from None
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


def _check_numbers(values: Any, loc: list[str | int], *, name: str) -> list[Any]:
    if not isinstance(values, list):
        raise _unprocessable([*loc, name], f"{name} must be a list of numbers", "list_type")
    kinds = set(map(type, values))
    if not kinds <= _NUMBER_TYPES:
        for j, v in enumerate(values):
            if type(v) not in _NUMBER_TYPES:
                raise _unprocessable(
                    [*loc, name, j], f"{name}[{j}] is not a number: {v!r}"[:200], "float_type"
                )
    return values


def _check_item(
    state: ServingState, item: Any, loc: list[str | int]
) -> tuple[SeriesEntry, list[Any], list[Any] | None]:
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
    entry = state.entries.get(sid)
    if entry is None:
        why = state.failures.get(sid)
        msg = f"unknown series {sid!r}" if why is None else f"series {sid!r} not loaded: {why}"
        raise ClientError(404, [*loc, "series_id"], msg[:300], "not_found")
    if len(window) != entry.window:
        raise _unprocessable(
            [*loc, "window"],
            f"window has {len(window)} values; series {sid!r} takes {entry.window}"[:300],
            "window_length",
        )
    actual = item.get("actual")
    if actual is not None:
        actual = _check_numbers(actual, loc, name="actual")
        if not 1 <= len(actual) <= entry.horizon:
            raise _unprocessable(
                [*loc, "actual"],
                f"actual has {len(actual)} values; give 1..{entry.horizon}",
                "actual_length",
            )
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


def _result(
    entry: SeriesEntry, forecast: Any, sigma: Any, actual: list[Any] | None, loc: list[str | int]
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
        _finite32(actual, loc, name="actual")  # same range rule as windows
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
        doc = _result(entry, forecast[0], sigma[0], actual, base)
        return orjson.dumps(doc, option=_DUMP_OPTS), 1

    base = ["body", "items"]
    checked = [_check_item(state, item, [*base, i]) for i, item in enumerate(items)]
    n = len(checked)
    forecasts: list[Any] = [None] * n
    sigmas: list[Any] = [None] * n
    for idx, group in _groups([c[0] for c in checked]):
        windows = _windows32([checked[i][1] for i in idx])
        if not np.isfinite(windows).all():
            for i in idx:  # name the first offending item and value
                _finite32(checked[i][1], [*base, i], name="window")
        rows = np.fromiter((checked[i][0].row for i in idx), dtype=np.int64, count=len(idx))
        forecast, sigma = state.runtimes[group].run(windows, rows)
        for k, i in enumerate(idx):
            forecasts[i] = forecast[k]
            sigmas[i] = sigma[k]
    results = [
        _result(entry, forecasts[i], sigmas[i], actual, [*base, i])
        for i, (entry, _, actual) in enumerate(checked)
    ]
    return orjson.dumps({"results": results}, option=_DUMP_OPTS), n


def _groups(entries: Sequence[SeriesEntry]) -> list[tuple[list[int], int]]:
    """``[(item indices, runtime group)]``, groups in order of first appearance."""
    by_group: dict[int, list[int]] = {}
    for i, entry in enumerate(entries):
        by_group.setdefault(entry.group, []).append(i)
    return [(idx, group) for group, idx in by_group.items()]


def run_groups(
    state: ServingState, entries: Sequence[SeriesEntry], windows: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``(forecast [n, H], sigma [n, H])`` for ``windows [n, L]`` of ``entries``: one ``run``
    per runtime group. All groups must share H (422 otherwise: the binary format's rule)."""
    n = len(entries)
    rows = np.fromiter((e.row for e in entries), dtype=np.int64, count=n)
    first = entries[0].group
    if all(e.group == first for e in entries):
        return state.runtimes[first].run(windows, rows)
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
                ["body", "items", idx[0], "series_id"],
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
        why = state.failures.get(series_id)
        msg = f"unknown series {series_id!r}" if why is None else f"not loaded: {why}"
        raise ClientError(404, ["path", "series_id"], msg[:300], "not_found")
    return {
        "series_id": entry.series_id,
        "family": entry.family,
        "window": entry.window,
        "horizon": entry.horizon,
        "threshold": entry.threshold,
        "residual_scale": entry.residual_scale,
        "served_by": state.runtimes[entry.group].kind,
        "lineage": entry.lineage,
    }
