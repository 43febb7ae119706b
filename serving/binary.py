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

Response (200; errors are the JSON bodies of the JSON format)::

    0       4 bytes         magic  b"MLR1"
    4       uint32          n
    8       uint32          H      forecast steps
    12      uint32          A
    16      uint32          M      byte length of the meta block
    20      M bytes         meta: JSON {"generation": g, "series": [{"series_id", "threshold",
                            "lineage"}, ...]} -- the distinct series of the batch
    ...     0..7 bytes      zero padding to a multiple of 8
    ...     uint32[n]       row -> index into meta["series"]
    ...     0..7 bytes      zero padding to a multiple of 8
    ...     float32[n, H]   forecast
    ...     float32[n, H]   sigma
    ...     float64[n, A]   residual        (only when A > 0)
    ...     float64[n, A]   anomaly_score   (only when A > 0)
    ...     uint8[n, A]     is_anomaly      (only when A > 0)
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from mamlctl.serving.scoring import ClientError, run_groups
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


def _decode(
    state: ServingState, body: bytes, max_batch: int
) -> tuple[list[SeriesEntry], npt.NDArray[np.float32], npt.NDArray[np.float64] | None]:
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
    entries: list[SeriesEntry] = []
    get = state.entries.get
    for i, sid in enumerate(ids):
        entry = get(sid)
        if entry is None:
            why = state.failures.get(sid)
            msg = f"unknown series {sid!r}" if why is None else f"series {sid!r} not loaded: {why}"
            raise ClientError(404, ["body", "items", i, "series_id"], msg[:300], "not_found")
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
        entries.append(entry)
    windows = np.frombuffer(body, dtype="<f4", count=n * width, offset=start).reshape(n, width)
    _check_finite(windows, "window")
    actual = None
    if n_actual:
        offset = start + n * width * 4
        actual = np.frombuffer(body, dtype="<f8", count=n * n_actual, offset=offset)
        actual = actual.reshape(n, n_actual)
        with np.errstate(over="ignore"):
            _check_finite(actual.astype(np.float32), "actual")  # the JSON range rule
    return entries, windows, actual


def _check_finite(values: npt.NDArray[Any], name: str) -> None:
    ok = np.isfinite(values)
    if not ok.all():
        i, j = (int(v) for v in np.argwhere(~ok)[0])
        raise _bad(["items", i, name, j], f"{name}[{j}] is not finite as float32", "finite_number")


def score_binary(state: ServingState, body: bytes, *, max_batch: int) -> tuple[bytes, int]:
    """Validate and score a binary batch; ``(response body, rows scored)``."""
    entries, windows, actual = _decode(state, body, max_batch)
    n = len(entries)
    forecast, sigma = run_groups(state, entries, windows)
    by_id = {id(e): e for e in entries}  # one entry object per series; keeps first order
    distinct = list(by_id.values())
    position = {key: k for k, key in enumerate(by_id)}
    rows = np.fromiter((position[id(e)] for e in entries), dtype="<u4", count=n)
    meta_parts = b",".join([e.summary_json for e in distinct])
    meta = b'{"generation":%d,"series":[%s]}' % (state.generation, meta_parts)
    n_actual = 0 if actual is None else actual.shape[1]
    horizon = forecast.shape[1]
    head = _HEAD.pack(RESPONSE_MAGIC, n, horizon, n_actual, len(meta))
    parts = [head, meta, b"\0" * _pad8(len(head) + len(meta)), rows.tobytes()]
    parts.append(b"\0" * _pad8(4 * n))
    parts += [np.asarray(forecast, "<f4").tobytes(), np.asarray(sigma, "<f4").tobytes()]
    if actual is not None:
        residual = actual - forecast[:, :n_actual].astype(np.float64)
        scores = anomaly_score(residual, sigma[:, :n_actual])
        thresholds = np.array([e.threshold for e in entries], dtype=np.float64)[:, None]
        flags = flag(scores, thresholds)
        parts += [
            np.asarray(residual, "<f8").tobytes(),
            np.asarray(scores, "<f8").tobytes(),
            flags.astype(np.uint8).tobytes(),
        ]
    return b"".join(parts), n


def decode_response(body: bytes) -> dict[str, Any]:
    """A binary response as arrays (clients and tests)."""
    import orjson

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
    out: dict[str, Any] = {"meta": meta, "series_index": rows}
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
