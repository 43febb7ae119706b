"""The request side of MLflow's scoring protocol (:mod:`mamlctl.serving.invocations`): a long
frame ``unique_id, ds, y`` as ``dataframe_split``, ``dataframe_records`` or CSV -> per series
values and stamps (sorted by ``ds``), or an :class:`InvocationError` naming the field.

``unique_id`` is a string (an integer is taken as its text), ``y`` a finite number, ``ds`` (in
every row or none) an integer position or an ISO time, one kind for the whole frame; other
columns are ignored, as the pyfunc model ignores them.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
FORMS = ("dataframe_split", "dataframe_records")
_TENSOR_FORMS = ("instances", "inputs")
_ERROR_CODES = {
    400: "BAD_REQUEST",
    404: "RESOURCE_DOES_NOT_EXIST",
    413: "REQUEST_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",
    503: "TEMPORARILY_UNAVAILABLE",
}
_MAX_ID = 512


class InvocationError(Exception):
    """A whole-request error: ``status``, a message naming the field, and its ``loc``."""

    def __init__(self, status: int, loc: list[str | int], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.loc = loc
        self.message = message

    def body(self) -> bytes:
        code = _ERROR_CODES.get(self.status, "BAD_REQUEST")
        return orjson.dumps({"error_code": code, "message": self.message, "loc": self.loc})


def _bad(loc: list[str | int], message: str) -> InvocationError:
    return InvocationError(400, loc, message[:300])


@dataclass(slots=True)
class Frame:
    """The long frame, per series in order of first appearance: values and stamps."""

    has_ds: bool
    values: dict[str, list[float]] = field(default_factory=dict)
    stamps: dict[str, list[Any]] = field(default_factory=dict)
    #: where each series' first row was (the ``loc`` of its per-series errors)
    first_loc: dict[str, list[str | int]] = field(default_factory=dict)


def parse_invocation(body: bytes, content_type: str | None) -> tuple[Frame, tuple[float, ...]]:
    """``(frame, levels)`` of a ``POST /invocations`` body, or an :class:`InvocationError`."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == CSV_TYPE:
        return _csv_frame(body), ()
    if kind != JSON_TYPE:
        raise InvocationError(
            415,
            ["header", "content-type"],
            f"content-type must be {JSON_TYPE} or {CSV_TYPE}, got {kind or 'none'!r}"[:300],
        )
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise _bad(["body"], f"malformed JSON: {err}") from None
    if not isinstance(doc, dict):
        raise _bad(["body"], f"body must be a JSON object with one of {list(FORMS)}")
    for key in doc:
        if key not in (*FORMS, *_TENSOR_FORMS, "params"):
            raise _bad(["body", key], f"unknown field {key!r}; expected one of {list(FORMS)}")
    for key in _TENSOR_FORMS:
        if key in doc:
            raise _bad(["body", key], f"tensor input {key!r} is not served: send {list(FORMS)}")
    forms = [k for k in FORMS if k in doc]
    if len(forms) != 1:
        raise _bad(["body"], f"give exactly one of {list(FORMS)}")
    levels = _levels(doc.get("params"))
    if forms[0] == "dataframe_split":
        return _split_frame(doc["dataframe_split"]), levels
    return _records_frame(doc["dataframe_records"]), levels


def _levels(params: Any) -> tuple[float, ...]:
    if params is None:
        return ()
    if not isinstance(params, dict):
        raise _bad(["body", "params"], "params must be an object")
    for key in params:
        if key != "level":
            raise _bad(["body", "params", key], f"unknown parameter {key!r}; known: ['level']")
    raw = params.get("level")
    if raw is None:
        return ()
    raw = raw if isinstance(raw, list) else [raw]
    out: list[float] = []
    for j, value in enumerate(raw):
        if type(value) not in (int, float) or not 0 < value < 100:
            raise _bad(
                ["body", "params", "level", j],
                f"params.level[{j}] must be a percentage strictly between 0 and 100",
            )
        if float(value) not in out:
            out.append(float(value))
    return tuple(out)


def _split_frame(split: Any) -> Frame:
    base: list[str | int] = ["body", "dataframe_split"]
    if not isinstance(split, dict):
        raise _bad(base, "dataframe_split must be an object with 'columns' and 'data'")
    for key in split:
        if key not in ("columns", "data", "index"):
            raise _bad([*base, key], f"unknown field dataframe_split.{key}"[:200])
    columns, data = split.get("columns"), split.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise _bad([*base, "columns"], "dataframe_split.columns must be a list of names")
    if not isinstance(data, list):
        raise _bad([*base, "data"], "dataframe_split.data must be a list of rows")
    at = _column_positions(columns, [*base, "columns"])
    builder = _Builder(has_ds="ds" in at)
    for i, row in enumerate(data):
        loc: list[str | int] = [*base, "data", i]
        if not isinstance(row, list) or len(row) != len(columns):
            raise _bad(loc, f"dataframe_split.data[{i}] must be a list of {len(columns)} values")
        builder.add({name: row[j] for name, j in at.items()}, loc, positions=at)
    return builder.done()


def _records_frame(records: Any) -> Frame:
    base: list[str | int] = ["body", "dataframe_records"]
    if not isinstance(records, list):
        raise _bad(base, "dataframe_records must be a list of row objects")
    has_ds = bool(records) and isinstance(records[0], dict) and "ds" in records[0]
    builder = _Builder(has_ds=has_ds)
    for i, row in enumerate(records):
        loc: list[str | int] = [*base, i]
        if not isinstance(row, dict):
            raise _bad(loc, f"dataframe_records[{i}] must be an object")
        for name in ("unique_id", "y", *(("ds",) if has_ds else ())):
            if name not in row:
                raise _bad([*loc, name], f"dataframe_records[{i}] lacks column {name!r}")
        if not has_ds and "ds" in row:
            raise _bad([*loc, "ds"], "ds is in some rows, not the first: in every row or none")
        builder.add(row, loc, positions=None)
    return builder.done()


def _csv_frame(body: bytes) -> Frame:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(["body"], "the CSV body is not UTF-8") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as err:
        raise _bad(["body"], f"malformed CSV: {err}") from None
    if not rows:
        raise _bad(["body"], "the CSV body is empty: give a header row unique_id,ds,y")
    at = _column_positions([c.strip() for c in rows[0]], ["body", "header"])
    builder = _Builder(has_ds="ds" in at)
    for i, row in enumerate(rows[1:], start=1):
        loc: list[str | int] = ["body", "line", i + 1]
        if not row:
            continue
        if len(row) != len(rows[0]):
            raise _bad(loc, f"CSV line {i + 1} has {len(row)} fields, the header {len(rows[0])}")
        cells: dict[str, Any] = {name: row[j] for name, j in at.items()}
        cells["y"] = _csv_number(cells["y"], [*loc, "y"])
        if "ds" in cells:
            ds = cells["ds"].strip()
            cells["ds"] = int(ds) if ds.lstrip("-").isdigit() else ds
        builder.add(cells, loc, positions=None)
    return builder.done()


def _csv_number(text: str, loc: list[str | int]) -> float:
    try:
        return float(text)
    except ValueError:
        raise _bad(loc, f"y at CSV line {loc[2]} is not a number: {text[:40]!r}") from None


def _column_positions(columns: list[str], loc: list[str | int]) -> dict[str, int]:
    missing = [c for c in ("unique_id", "y") if c not in columns]
    if missing:
        raise _bad(loc, f"the frame lacks column(s) {missing}; expected unique_id, ds, y")
    return {name: columns.index(name) for name in ("unique_id", "ds", "y") if name in columns}


def _finite_number(value: Any) -> bool:
    """A JSON number (not a bool) that is finite as a float (an int past float range is not)."""
    if type(value) is float:
        return math.isfinite(value)
    return type(value) is int and abs(value) < 2**1024


@dataclass(slots=True)
class _Builder:
    """Checks rows one at a time and collects them per series."""

    has_ds: bool
    frame: Frame = field(init=False)
    ds_kind: type | None = None
    aware: bool | None = None

    def __post_init__(self) -> None:
        self.frame = Frame(has_ds=self.has_ds)

    def add(self, row: dict[str, Any], loc: list[str | int], *, positions: Any) -> None:
        def at(name: str) -> list[str | int]:
            return [*loc, positions[name]] if positions is not None else [*loc, name]

        sid = row["unique_id"]
        if type(sid) is int:
            sid = str(sid)
        if not isinstance(sid, str) or not sid or len(sid) > _MAX_ID:
            raise _bad(at("unique_id"), f"unique_id must be a string of 1..{_MAX_ID} chars")
        y = row["y"]
        if not _finite_number(y):
            raise _bad(at("y"), f"y of series {sid!r} must be a finite number"[:200])
        frame = self.frame
        if sid not in frame.values:
            frame.values[sid], frame.stamps[sid], frame.first_loc[sid] = [], [], list(loc)
        frame.values[sid].append(float(y))
        if self.has_ds:
            frame.stamps[sid].append(self._stamp(row.get("ds"), at("ds")))

    def _stamp(self, ds: Any, loc: list[str | int]) -> Any:
        value: Any
        if type(ds) is int:
            value = ds
        elif isinstance(ds, str):
            try:
                value = datetime.fromisoformat(ds.strip())
            except ValueError:
                raise _bad(loc, f"ds must be an integer or an ISO time, got {ds[:40]!r}") from None
            aware = value.tzinfo is not None
            if self.aware is not None and aware != self.aware:
                raise _bad(loc, "ds mixes times with and without a time zone")
            self.aware = aware
        else:
            raise _bad(loc, "ds must be an integer position or an ISO time string")
        if self.ds_kind is not None and type(value) is not self.ds_kind:
            raise _bad(loc, "ds mixes integer positions and times")
        self.ds_kind = type(value)
        return value

    def done(self) -> Frame:
        frame = self.frame
        if not frame.values:
            raise _bad(["body"], "the frame has no rows")
        if self.has_ds:  # each series sorted by ds (stable), as the pyfunc model sorts it
            for sid, stamps in frame.stamps.items():
                order = sorted(range(len(stamps)), key=stamps.__getitem__)
                frame.stamps[sid] = [stamps[k] for k in order]
                values = frame.values[sid]
                frame.values[sid] = [values[k] for k in order]
        return frame
