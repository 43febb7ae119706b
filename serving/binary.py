"""The binary batch format of ``POST /v1/score`` (``Content-Type: application/octet-stream``).

JSON stays the default; this is an additional fast path for large batches, where decoding and
encoding 256 x 96 numbers as text costs more than scoring them. Both formats run the same
checks (same 404/413/422 bodies, the same ``loc`` of the offending field) and the same model
calls, and give identical numbers. All integers and floats are little-endian.

Request::

    offset  type            field
    0       4 bytes         magic  b"MLB1"
    4       uint32          n      rows (1..max batch)
    8       uint32          L      window length (every row's series must take L points)
    12      uint32          A      actual values per row (0: no anomaly scoring; else 1..H)
    16      uint32          I      byte length of the ids block
    20      I bytes         series ids, UTF-8, joined by b"\\n"
    ...     0..7 bytes      zero padding to a multiple of 8 from offset 0
    ...     float32[n, L]   windows, oldest value first
    ...     float64[n, A]   actual values (what happened after each window)

Response (200; whole-request errors are the JSON bodies of the JSON format)::

    0       4 bytes         magic  b"MLR1"
    4       uint32          n
    8       uint32          H      forecast steps
    12      uint32          A
    16      uint32          M      byte length of the meta block
    20      M bytes         meta: JSON {"generation": g, "series": [{"series_id", "threshold",
                            "lineage"}, ...]} -- the distinct series of the scored rows --
                            and, only when some rows failed, "errors": [{"row", "series_id",
                            "error": {"status", "type", "msg", "loc"}}, ...]
    ...     0..7 bytes      zero padding to a multiple of 8
    ...     uint32[n]       row -> index into meta["series"]; 0xFFFFFFFF for a failed row
    ...     0..7 bytes      zero padding to a multiple of 8
    ...     float32[n, H]   forecast
    ...     float32[n, H]   sigma
    ...     float64[n, A]   residual        (only when A > 0)
    ...     float64[n, A]   anomaly_score   (only when A > 0)
    ...     uint8[n, A]     is_anomaly      (only when A > 0)

Per-row errors, as in a JSON batch: a row naming an unknown or unloaded series, a series that
takes another window length than L or fewer than A forecast steps, a window or actual value
that is not finite as float32, or a window the model turns into non-finite numbers is answered
in place -- series index 0xFFFFFFFF, NaN in its forecast, sigma, residual and anomaly_score, 0
in is_anomaly, and an entry in meta["errors"] (the JSON batch's error object, ``loc`` included)
-- and the other rows are scored exactly as in a batch without it. A batch without failed rows
is byte-identical to the format before per-row errors (no "errors" key). Whole-request errors
stay 4xx: a bad header or length, ids that are not UTF-8, an empty or oversized batch, valid
rows of series with different horizons. When no row could be scored, H is 0.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from mamlctl.serving.scoring import ClientError, not_found, overflow, run_groups
from mamlctl.serving.state import SeriesEntry, ServingState
from mamlctl.timeseries.anomaly import anomaly_score, flag

CONTENT_TYPE = b"application/octet-stream"
REQUEST_MAGIC = b"MLB1"
RESPONSE_MAGIC = b"MLR1"
_HEAD = struct.Struct("<4sIIII")


def _bad(loc: list[str | int], msg: str, kind: str) -> ClientError:
    return ClientError(422, ["body", *loc], msg, kind)


def _pad8(size: int) -> int:
    return -size % 8


def encode_request(
    series_ids: list[str], windows: npt.ArrayLike, actual: npt.ArrayLike | None = None
) -> bytes:
    """A request body in this format (clients, tests and the benchmark use it)."""
    win = np.ascontiguousarray(windows, dtype="<f4")
    act = np.zeros((len(series_ids), 0)) if actual is None else np.asarray(actual)
    act = np.ascontiguousarray(act, dtype="<f8")
    ids = "\n".join(series_ids).encode()
    head = _HEAD.pack(REQUEST_MAGIC, len(series_ids), win.shape[1], act.shape[1], len(ids))
    pad = b"\0" * _pad8(len(head) + len(ids))
    return b"".join([head, ids, pad, win.tobytes(), act.tobytes()])


class _Rows:
    """A decoded request: the rows that passed (entries, windows, actual, their positions in
    the request) and the error entries of those that did not."""

    __slots__ = ("actual", "entries", "errors", "n", "n_actual", "positions", "windows")

    def __init__(self, n: int, n_actual: int) -> None:
        self.n = n
        self.n_actual = n_actual
        self.entries: list[SeriesEntry] = []
        self.positions: list[int] = []
        self.errors: dict[int, dict[str, Any]] = {}
        self.windows: npt.NDArray[np.float32] = np.empty((0, 0), np.float32)
        self.actual: npt.NDArray[np.float64] | None = None

    def fail(self, row: int, sid: str, err: ClientError) -> None:
        self.errors[row] = {"row": row, "series_id": sid, "error": err.item_error()}


def _decode(state: ServingState, body: bytes, max_batch: int) -> _Rows:
    if len(body) < _HEAD.size:
        raise _bad([], "binary body shorter than its 20-byte header", "binary_header")
    magic, n, width, n_actual, id_len = _HEAD.unpack_from(body)
    if magic != REQUEST_MAGIC:
        raise _bad([], "binary body must start with b'MLB1'", "binary_header")
    if n == 0:
        raise _bad(["items"], "empty batch: give at least one item", "too_short")
    if n > max_batch:
        raise _bad(["items"], f"batch of {n} items exceeds {max_batch}", "too_long")
    start = _HEAD.size + id_len
    start += _pad8(start)
    expected = start + n * width * 4 + n * n_actual * 8
    if len(body) != expected:
        msg = f"binary body has {len(body)} bytes; its header says {expected}"
        raise _bad([], msg, "binary_length")
    try:
        ids = body[_HEAD.size : _HEAD.size + id_len].decode().split("\n")
    except UnicodeDecodeError:
        raise _bad(["ids"], "series ids are not UTF-8", "string_type") from None
    if len(ids) != n:
        raise _bad(["ids"], f"{len(ids)} series ids for {n} rows", "binary_length")
    out = _Rows(n, n_actual)
    windows = np.frombuffer(body, dtype="<f4", count=n * width, offset=start).reshape(n, width)
    actual = None
    if n_actual:
        offset = start + n * width * 4
        actual = np.frombuffer(body, dtype="<f8", count=n * n_actual, offset=offset)
        actual = actual.reshape(n, n_actual)
    bad_window = _first_non_finite(windows)
    with np.errstate(over="ignore"):  # the JSON range rule: finite as float32
        bad_actual = None if actual is None else _first_non_finite(actual.astype(np.float32))
    get = state.entries.get
    entries = [get(sid) for sid in ids]
    if bad_window is None and bad_actual is None and _all_servable(entries, width, n_actual):
        # the common batch: every row names a loaded series of this window and horizon, every
        # number is finite; no per-row checks or copies (the loop below gives the same rows)
        out.entries = entries  # type: ignore[assignment]
        out.positions = list(range(n))
        out.windows, out.actual = windows, actual
        return out
    for i, sid in enumerate(ids):
        try:
            out.entries.append(_check_row(state, get(sid), sid, i, width, n_actual))
        except ClientError as err:
            out.fail(i, sid, err)
            continue
        for name, bad in (("window", bad_window), ("actual", bad_actual)):
            if bad is not None and i in bad:
                j = bad[i]
                msg = f"{name}[{j}] is not finite as float32"
                out.fail(i, sid, _bad(["items", i, name, j], msg, "finite_number"))
                out.entries.pop()
                break
        else:
            out.positions.append(i)
    if len(out.positions) == n:
        out.windows, out.actual = windows, actual
    elif out.positions:
        take = np.array(out.positions, dtype=np.int64)
        out.windows = np.ascontiguousarray(windows[take])
        out.actual = None if actual is None else actual[take]
    return out


def _all_servable(entries: list[SeriesEntry | None], width: int, n_actual: int) -> bool:
    """Every row's series is loaded, takes windows of ``width`` and forecasts ``n_actual``
    steps or more (what :func:`_check_row` checks one row at a time)."""
    try:
        if {e.window for e in entries} != {width}:  # type: ignore[union-attr]
            return False
        return not n_actual or min(e.horizon for e in entries) >= n_actual  # type: ignore[union-attr]
    except AttributeError:  # a None: an unknown or unloaded series
        return False


def _check_row(
    state: ServingState, entry: SeriesEntry | None, sid: str, i: int, width: int, n_actual: int
) -> SeriesEntry:
    if entry is None:
        raise not_found(state, sid, ["body", "items", i, "series_id"])
    if entry.window != width:
        raise _bad(
            ["items", i, "window"],
            f"window has {width} values; series {sid!r} takes {entry.window}"[:300],
            "window_length",
        )
    if n_actual > entry.horizon:
        raise _bad(
            ["items", i, "actual"],
            f"actual has {n_actual} values; give 1..{entry.horizon}",
            "actual_length",
        )
    return entry


def _first_non_finite(values: npt.NDArray[Any]) -> dict[int, int] | None:
    """``{row: first non-finite column}``, or None when every value is finite."""
    ok = np.isfinite(values)
    if ok.all():
        return None
    bad: dict[int, int] = {}
    for i, j in np.argwhere(~ok):
        bad.setdefault(int(i), int(j))
    return bad


def score_binary(state: ServingState, body: bytes, *, max_batch: int) -> tuple[bytes, int]:
    """Validate and score a binary batch; ``(response body, rows scored)``."""
    rows = _decode(state, body, max_batch)
    n, n_actual = rows.n, rows.n_actual
    entries, positions, actual = rows.entries, rows.positions, rows.actual
    forecast = sigma = np.empty((0, 0), np.float32)
    if entries:
        forecast, sigma = run_groups(state, entries, rows.windows, positions=positions)
        ok = np.isfinite(forecast).all(axis=1) & np.isfinite(sigma).all(axis=1)
        if not ok.all():  # the model overflowed on these finite windows
            for k in np.flatnonzero(~ok):
                i = positions[k]
                rows.fail(i, entries[k].series_id, overflow(["body", "items", i]))
            keep = np.flatnonzero(ok)
            entries = [entries[k] for k in keep]
            positions = [positions[k] for k in keep]
            forecast, sigma = forecast[keep], sigma[keep]
            actual = None if actual is None else actual[keep]
    horizon = forecast.shape[1] if entries else 0
    distinct, index = _distinct(entries)
    meta_parts = b",".join([e.summary_json for e in distinct])
    meta = b'{"generation":%d,"series":[%s]' % (state.generation, meta_parts)
    if rows.errors:
        meta += b',"errors":' + orjson.dumps([rows.errors[i] for i in sorted(rows.errors)])
    meta += b"}"
    blocks: list[npt.NDArray[Any]] = [
        np.asarray(forecast, "<f4").reshape(len(entries), horizon),
        np.asarray(sigma, "<f4").reshape(len(entries), horizon),
    ]
    if n_actual:
        residual = np.empty((0, n_actual))
        scores = np.empty((0, n_actual))
        flags = np.empty((0, n_actual), dtype=bool)
        if entries:
            assert actual is not None
            residual = actual - forecast[:, :n_actual].astype(np.float64)
            scores = anomaly_score(residual, sigma[:, :n_actual])
            thresholds = np.array([e.threshold for e in entries], dtype=np.float64)[:, None]
            flags = flag(scores, thresholds)
        blocks += [
            np.asarray(residual, "<f8"),
            np.asarray(scores, "<f8"),
            flags.astype(np.uint8),
        ]
    if len(entries) != n:  # failed rows: NaN numbers, no flag, index 0xFFFFFFFF
        take = np.array(positions, dtype=np.int64)
        index = _spread(index, take, n, _FAILED)
        blocks = [_spread(b, take, n, 0 if b.dtype == np.uint8 else np.nan) for b in blocks]
    head = _HEAD.pack(RESPONSE_MAGIC, n, horizon, n_actual, len(meta))
    parts = [head, meta, b"\0" * _pad8(len(head) + len(meta)), index.tobytes()]
    parts.append(b"\0" * _pad8(4 * n))
    parts += [b.tobytes() for b in blocks]
    return b"".join(parts), len(entries)


_FAILED = 0xFFFFFFFF


def _distinct(entries: list[SeriesEntry]) -> tuple[list[SeriesEntry], npt.NDArray[np.uint32]]:
    """The distinct series of ``entries`` in order of first appearance (one entry object per
    series), and each row's index into them; every pass over the rows runs in C (map, zip,
    dict), not a Python step per row."""
    keys = list(map(id, entries))
    by_id = dict(zip(keys, entries, strict=True))  # a key keeps its first position
    position = dict(zip(by_id, range(len(by_id)), strict=False))
    index = np.fromiter(map(position.__getitem__, keys), dtype="<u4", count=len(keys))
    return list(by_id.values()), index


def _spread(values: npt.NDArray[Any], take: npt.NDArray[np.int64], n: int, fill: Any) -> Any:
    """``values`` of the scored rows placed at rows ``take`` of ``n``, ``fill`` elsewhere."""
    out = np.full((n, *values.shape[1:]), fill, dtype=values.dtype)
    out[take] = values
    return out


def decode_response(body: bytes) -> dict[str, Any]:
    """A binary response as arrays (clients and tests); ``status[i]`` is 200 for a scored row,
    else its error's status (the error itself: ``meta["errors"]``)."""
    magic, n, horizon, n_actual, meta_len = _HEAD.unpack_from(body)
    if magic != RESPONSE_MAGIC:
        raise ValueError("not a binary scoring response")
    pos = _HEAD.size
    meta = orjson.loads(body[pos : pos + meta_len])
    pos += meta_len
    pos += _pad8(pos)
    rows = np.frombuffer(body, "<u4", n, pos)
    pos += 4 * n
    pos += _pad8(pos)
    status = np.full(n, 200, dtype=np.uint16)
    for err in meta.get("errors", ()):
        status[err["row"]] = err["error"]["status"]
    out: dict[str, Any] = {"meta": meta, "series_index": rows, "status": status}
    for name, dtype, width in (
        ("forecast", "<f4", horizon),
        ("sigma", "<f4", horizon),
        ("residual", "<f8", n_actual),
        ("anomaly_score", "<f8", n_actual),
        ("is_anomaly", "u1", n_actual),
    ):
        if width == 0 and name not in ("forecast", "sigma"):
            out[name] = None
            continue
        arr = np.frombuffer(body, dtype, n * width, pos).reshape(n, width)
        pos += arr.nbytes
        out[name] = arr.astype(bool) if name == "is_anomaly" else arr
    return out
