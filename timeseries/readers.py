"""Read series from files: long CSV/Parquet, M4 wide CSV, NAB ``timestamp,value`` CSV.

* **long**: columns ``series_id``, ``value`` and optionally ``timestamp`` (CSV, CSV.gz or
  Parquet); rows of one series stay in file order (non-monotonic timestamps are an error
  later, never silently sorted).
* **m4**: the M4 competition's wide CSV (``"V1","V2",...``, one row per series, first column
  the id, right-padded with empty cells); no timestamps, integer positions.
* **nab**: ``timestamp,value`` with one series per file, its id the file name without
  ``.csv``/``.csv.gz``.

A folder stands for every data file below it (``.csv``, ``.csv.gz``, ``.parquet``, ``.pq``),
recursively, in sorted order.

Parsing is strict: no index inference (a row with more fields than the header is an error
naming its line, never a shifted row), lines are at most :data:`MAX_LINE_BYTES` long (checked
by a streaming scan before the parser allocates anything), a NUL byte anywhere in a CSV is an
error, and series ids are text without NUL (Parquet bytes ids are decoded as UTF-8).

Readers raise :class:`~mamlctl.errors.IngestError` naming the
file (and series, row) for malformed input; values are returned as float64 with NaN where a
cell was empty, for :mod:`mamlctl.timeseries.validation` to reject or fill.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from mamlctl.domain import Series
from mamlctl.errors import IngestError, NotFoundError
from mamlctl.timeseries.csv_guard import (
    MAX_LINE_BYTES,
    field_count_error,
    open_binary,
    scan_lines,
)

FileFormat = Literal["auto", "long", "m4", "nab"]
DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".txt", ".txt.gz")

#: Sampling interval implied by an M4 file name (M4 has no timestamps).
M4_INTERVALS: dict[str, float] = {
    "hourly": 3600.0,
    "daily": 86400.0,
    "weekly": 7 * 86400.0,
    "monthly": 30.436875 * 86400.0,
    "quarterly": 91.310625 * 86400.0,
    "yearly": 365.2425 * 86400.0,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceFile:
    """What one file held: its series (unvalidated) and the interval its name implies."""

    path: Path
    format: Literal["long", "m4", "nab"]
    series: tuple[Series, ...]
    interval_seconds: float | None = None


def _is_data_file(path: Path) -> bool:
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(DATA_SUFFIXES)


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files to ingest: each file as given, each folder's data files recursively, sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_data_file(p))
            if not found:
                raise NotFoundError(f"{path}: folder holds no .csv, .csv.gz or .parquet file")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise NotFoundError(f"{path}: no such file or folder")
    return out


def series_id_from_name(path: Path) -> str:
    """``data/realKnownCause/nyc_taxi.csv.gz`` -> ``nyc_taxi``."""
    name = path.name
    for suffix in (".gz", ".csv", ".txt", ".parquet", ".pq"):
        name = name.removesuffix(suffix)
    return name


def m4_interval_from_name(path: Path) -> float | None:
    """``Hourly-train.csv.gz`` or ``m4-Hourly-train-demo.csv.gz`` -> 3600.

    The first dash/underscore/dot-separated part of the name that is an M4 frequency wins;
    None when no part names one.
    """
    for part in re.split(r"[-_.]", path.name.lower()):
        if part in M4_INTERVALS:
            return M4_INTERVALS[part]
    return None


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith((".parquet", ".pq"))


def _header(path: Path) -> list[str]:
    try:
        with open_binary(path) as fh:
            raw = fh.readline(MAX_LINE_BYTES + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise IngestError(f"{path}: cannot read file: {err}") from None
    if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
        raise IngestError(f"{path}: line 1 is longer than {MAX_LINE_BYTES >> 20} MiB")
    line = raw.decode("utf-8", errors="replace")
    return [c.strip().strip('"').strip().lower() for c in line.rstrip("\r\n").split(",")]


def detect_format(path: Path) -> Literal["long", "m4", "nab"]:
    """Tell the format from the header (Parquet files are long)."""
    if _is_parquet(path):
        return "long"
    cols = _header(path)
    if len(cols) >= 2 and cols[0] == "v1" and cols[1] == "v2":
        return "m4"
    if cols == ["timestamp", "value"]:
        return "nab"
    if "series_id" in cols and "value" in cols:
        return "long"
    raise IngestError(
        f"{path}: cannot tell the format from header {','.join(cols)[:80]!r}: expected "
        "series_id,timestamp,value (long), timestamp,value (nab) or V1,V2,... (m4); "
        "pass --format"
    )


def read_file(path: Path, *, fmt: FileFormat = "auto") -> SourceFile:
    """Read one file in the given (or detected) format."""
    actual = detect_format(path) if fmt == "auto" else fmt
    if actual == "m4":
        return SourceFile(
            path=path,
            format="m4",
            series=_read_m4(path),
            interval_seconds=m4_interval_from_name(path),
        )
    if actual == "nab":
        return SourceFile(path=path, format="nab", series=(_read_nab(path),))
    return SourceFile(path=path, format="long", series=_read_long(path))


def read_paths(paths: Iterable[Path], *, fmt: FileFormat = "auto") -> Iterator[SourceFile]:
    for path in expand_paths(paths):
        yield read_file(path, fmt=fmt)


# --- parsing --------------------------------------------------------------------------------


def _read_csv(path: Path, **kwargs: Any) -> Any:
    """``pandas.read_csv`` without index inference, after the line scan; a row with more
    fields than the header is an error naming its line."""
    import warnings

    import pandas as pd

    scan_lines(path)
    try:
        with warnings.catch_warnings():
            # index_col=False: pandas warns (and drops data) where it would have inferred an index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, index_col=False, **kwargs)
    except pd.errors.EmptyDataError:
        raise IngestError(f"{path}: file is empty") from None
    except (pd.errors.ParserWarning, pd.errors.ParserError) as err:
        located = field_count_error(path)
        if located is not None:
            raise located from None
        msg = " ".join(str(err).split())[:200]
        raise IngestError(f"{path}: malformed CSV: {msg}") from None
    except (UnicodeDecodeError, ValueError, OSError, EOFError) as err:
        msg = " ".join(str(err).split())[:200]
        raise IngestError(f"{path}: malformed CSV: {msg}") from None


Where = Callable[[int], str]


def _lines(first: int) -> Where:
    return lambda i: f"line {first + i}"


def _numeric(path: Path, series_id: str, raw: Any, where: Where) -> npt.NDArray[np.float64]:
    """Column -> float64; empty cells become NaN, text that is not a number is an error."""
    import pandas as pd

    if raw.dtype.kind in "fiu":
        return np.asarray(raw, dtype=np.float64)
    if raw.dtype.kind == "b":
        raise IngestError(f"{path}: series {series_id}: values are booleans, not numbers")
    if raw.dtype.kind in "Mm" or isinstance(raw.dtype, pd.DatetimeTZDtype):
        raise IngestError(f"{path}: series {series_id}: values are datetimes, not numbers")
    try:
        num = pd.to_numeric(raw, errors="coerce")
    except (TypeError, ValueError):
        raise IngestError(
            f"{path}: series {series_id}: values of type {raw.dtype} are not numbers"
        ) from None
    bad = np.flatnonzero(num.isna().to_numpy() & raw.notna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise IngestError(
            f"{path}: series {series_id}: non-numeric value {str(raw.iloc[i])[:40]!r} at {where(i)}"
        )
    return np.asarray(num, dtype=np.float64)


def _timestamps(path: Path, series_id: str, raw: Any, where: Where) -> npt.NDArray[np.datetime64]:
    """Column -> naive UTC datetime64[us]; unparsable cells are an error."""
    import pandas as pd

    if raw.dtype.kind == "M":
        parsed = raw
    else:
        if raw.dtype.kind in "fiu":
            raise IngestError(
                f"{path}: series {series_id}: numeric timestamps are ambiguous; use ISO 8601 "
                "text (or drop the column for integer positions)"
            )
        try:
            parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
        except (ValueError, TypeError):
            parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if bad.size:
            i = int(bad[0])
            raise IngestError(
                f"{path}: series {series_id}: bad timestamp {str(raw.iloc[i])[:40]!r} at {where(i)}"
            )
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return np.asarray(parsed.to_numpy(dtype="datetime64[us]"))


def _read_m4(path: Path) -> tuple[Series, ...]:
    df = _read_csv(path, dtype={0: str})
    if df.shape[1] < 2:
        raise IngestError(f"{path}: M4 file needs an id column and at least one value column")
    if df.iloc[:, 0].isna().any():
        i = int(np.flatnonzero(df.iloc[:, 0].isna().to_numpy())[0])
        raise IngestError(f"{path}: empty series id at line {i + 2}")
    ids = [str(i) for i in df.iloc[:, 0]]
    df = df.iloc[:, 1:]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise IngestError(f"{path}: series {dup}: id appears twice in the file")
    out: list[Series] = []
    numeric = all(k.kind in "fiu" for k in df.dtypes)
    matrix = df.to_numpy(dtype=np.float64) if numeric else None
    for row_i, sid in enumerate(ids):
        if matrix is not None:
            row = matrix[row_i]
        else:
            line = row_i + 2
            row = _numeric(
                path,
                sid,
                df.iloc[row_i].reset_index(drop=True),
                lambda i, line=line: f"line {line}, column V{i + 2}",  # type: ignore[misc]
            )
        present = np.flatnonzero(~np.isnan(row))
        if present.size == 0:
            raise IngestError(f"{path}: series {sid}: row holds no values (line {row_i + 2})")
        # M4 right-pads shorter series with empty cells; a gap inside stays NaN.
        out.append(Series(series_id=sid, values=row[: int(present[-1]) + 1].copy()))
    return tuple(out)


def _read_nab(path: Path) -> Series:
    df = _read_csv(path, dtype={"timestamp": str})
    cols = [str(c).strip().lower() for c in df.columns]
    if cols != ["timestamp", "value"]:
        raise IngestError(f"{path}: expected header timestamp,value, got {','.join(cols)[:80]}")
    sid = series_id_from_name(path)
    if len(df) == 0:
        raise IngestError(f"{path}: series {sid}: file holds no rows")
    values = _numeric(path, sid, df.iloc[:, 1], _lines(2))
    ts = _timestamps(path, sid, df.iloc[:, 0], _lines(2))
    return Series(series_id=sid, values=values, timestamps=ts)


def _text_ids(path: Path, ids: Any) -> Any:
    """Series ids as text: bytes (Parquet binary columns) decode as UTF-8; NUL is refused."""
    if ids.dtype == object:
        decoded = []
        for row, v in enumerate(ids.tolist(), 1):
            if isinstance(v, bytes | bytearray):
                try:
                    v = bytes(v).decode("utf-8")
                except UnicodeDecodeError:
                    raise IngestError(
                        f"{path}: series id at row {row} is not UTF-8 text: {bytes(v)[:40]!r}"
                    ) from None
            decoded.append(v)
        ids = ids.__class__(decoded, index=ids.index, dtype=object)
    texts = ids[ids.notna()].astype(str)
    has_nul = texts.str.contains("\x00", regex=False)
    if has_nul.any():
        bad = str(texts[has_nul].iloc[0])
        raise IngestError(f"{path}: series id {bad[:40]!r} contains a NUL character")
    return ids


def _read_long(path: Path) -> tuple[Series, ...]:
    import pandas as pd

    if _is_parquet(path):
        try:
            df = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises many types for broken files
            msg = " ".join(str(err).split())[:200]
            raise IngestError(f"{path}: cannot read Parquet: {msg}") from None
    else:
        df = _read_csv(path, dtype={"series_id": str, "timestamp": str})
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = {"series_id", "value"} - set(df.columns)
    if missing:
        raise IngestError(
            f"{path}: missing column(s) {', '.join(sorted(missing))}: long format needs "
            "series_id,[timestamp,]value"
        )
    if len(df) == 0:
        raise IngestError(f"{path}: file holds no rows")
    ids = _text_ids(path, df["series_id"])
    if ids.isna().any():
        i = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise IngestError(f"{path}: empty series_id at line {i + 2}")
    has_ts = "timestamp" in df.columns
    out: list[Series] = []
    for sid, idx in df.groupby(ids.astype(str), sort=False).indices.items():
        part = df.iloc[idx]
        where: Where = lambda i, idx=idx: f"line {int(idx[i]) + 2}"  # type: ignore[misc]  # noqa: E731
        values = _numeric(path, str(sid), part["value"].reset_index(drop=True), where)
        ts = (
            _timestamps(path, str(sid), part["timestamp"].reset_index(drop=True), where)
            if has_ts
            else None
        )
        out.append(Series(series_id=str(sid), values=values, timestamps=ts))
    return tuple(out)
