"""Read series from files: long CSV/Parquet, M4 wide CSV, NAB ``timestamp,value`` CSV.

* **long**: columns ``series_id``, ``value`` and optionally ``timestamp`` (CSV, CSV.gz or
  Parquet); rows of one series stay in file order (non-monotonic timestamps are an error
  later, never silently sorted).
* **nixtla**: the Nixtla long frame ``unique_id, ds, y`` (CSV or Parquet).
* **prophet**: ``ds, y``: one series per file, its id the file name (or ``series_id``).
  Explicit ``columns`` (``--id-col/--time-col/--value-col``) override the detection; the
  column roles are :mod:`mamlctl.timeseries.frames`'.
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mamlctl.domain import Series
from mamlctl.errors import IngestError, NotFoundError
from mamlctl.timeseries.csv_guard import (
    MAX_LINE_BYTES,
    field_count_error,
    open_binary,
    scan_lines,
)
from mamlctl.timeseries.frames import (
    ColumnRoles,
    Where,
    frame_kind,
    norm,
    numeric_column,
    resolve_roles,
    series_from_frame,
    timestamp_column,
)

FileFormat = Literal["auto", "long", "nixtla", "prophet", "m4", "nab"]
SourceFormat = Literal["long", "nixtla", "prophet", "m4", "nab"]


@dataclass(frozen=True, slots=True)
class Columns:
    """Explicit column names (``--id-col``/``--time-col``/``--value-col``); None = detect."""

    id: str | None = None
    time: str | None = None
    value: str | None = None

    @property
    def given(self) -> bool:
        return any(c is not None for c in (self.id, self.time, self.value))

    def roles(self, names: list[Any], *, source: object) -> ColumnRoles:
        return resolve_roles(
            names, source=source, id_col=self.id, time_col=self.time, value_col=self.value
        )


NO_COLUMNS = Columns()
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
    format: SourceFormat
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


def _frame_format(names: list[str], path: Path) -> SourceFormat | None:
    cols = [norm(c) for c in names]
    if "series_id" in cols and "value" in cols:
        return "long"
    if "unique_id" in cols and "y" in cols:
        return "nixtla"
    if "ds" in cols and "y" in cols:
        return "prophet"
    return None


def _parquet_columns(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except Exception as err:  # pyarrow raises many types for broken files
        msg = " ".join(str(err).split())[:200]
        raise IngestError(f"{path}: cannot read Parquet: {msg}") from None


def detect_format(path: Path) -> SourceFormat:
    """Tell the format from the header (the schema of a Parquet file)."""
    cols = _parquet_columns(path) if _is_parquet(path) else _header(path)
    if not _is_parquet(path):
        if len(cols) >= 2 and cols[0] == "v1" and cols[1] == "v2":
            return "m4"
        if cols == ["timestamp", "value"]:
            return "nab"
    found = _frame_format(cols, path)
    if found is not None:
        return found
    raise IngestError(
        f"{path}: cannot tell the format from header {','.join(cols)[:80]!r}: expected "
        "series_id,timestamp,value (long), unique_id,ds,y (Nixtla), ds,y (Prophet), "
        "timestamp,value (nab) or V1,V2,... (m4); pass --format or --id-col/--time-col/"
        "--value-col"
    )


def read_file(
    path: Path,
    *,
    fmt: FileFormat = "auto",
    columns: Columns = NO_COLUMNS,
    series_id: str | None = None,
) -> SourceFile:
    """Read one file in the given (or detected) format.

    ``columns`` names the id/time/value columns of a long frame (any given name implies a long
    frame); ``series_id`` names the one series of a frame without an id column (default: the
    file name without its suffixes).
    """
    if columns.given and fmt in ("auto", "long", "nixtla", "prophet"):
        actual: SourceFormat = "long"
    else:
        actual = detect_format(path) if fmt == "auto" else fmt
    if actual == "m4":
        return SourceFile(
            path=path,
            format="m4",
            series=_read_m4(path),
            interval_seconds=m4_interval_from_name(path),
        )
    if actual == "nab":
        sid = series_id or series_id_from_name(path)
        return SourceFile(path=path, format="nab", series=(_read_nab(path, sid),))
    if actual == "long" and not columns.given:
        columns = Columns(id="series_id")  # mamlctl's own long format names its id column
    elif actual == "nixtla" and not columns.given:
        columns = Columns(id="unique_id", time="ds", value="y")
    elif actual == "prophet" and not columns.given:
        columns = Columns(time="ds", value="y")
    roles, series = _read_long(path, columns, series_id)
    if fmt == "auto" and actual == "long":
        actual = frame_kind(roles)  # type: ignore[assignment]
    return SourceFile(path=path, format=actual, series=series)


def read_paths(paths: Iterable[Path], *, fmt: FileFormat = "auto") -> Iterator[SourceFile]:
    for path in expand_paths(paths):
        yield read_file(path, fmt=fmt)


def _raw_header(path: Path) -> list[str]:
    """The header's column names as pandas will name them (line 1 bounded first)."""
    import pandas as pd

    _header(path)  # the line-length guard
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0, index_col=False).columns]
    except pd.errors.EmptyDataError:
        raise IngestError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError, EOFError) as err:
        msg = " ".join(str(err).split())[:200]
        raise IngestError(f"{path}: malformed CSV: {msg}") from None


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
            # round_trip: the value stored is the number written (the default parser can be
            # one ulp off, so a frame written with to_csv would not read back equal)
            return pd.read_csv(path, index_col=False, float_precision="round_trip", **kwargs)
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


def _lines(first: int) -> Where:
    return lambda i: f"line {first + i}"


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
            row = numeric_column(
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


def _read_nab(path: Path, sid: str) -> Series:
    df = _read_csv(path, dtype={"timestamp": str})
    cols = [str(c).strip().lower() for c in df.columns]
    if cols != ["timestamp", "value"]:
        raise IngestError(f"{path}: expected header timestamp,value, got {','.join(cols)[:80]}")
    if len(df) == 0:
        raise IngestError(f"{path}: series {sid}: file holds no rows")
    values = numeric_column(path, sid, df.iloc[:, 1], _lines(2))
    ts = timestamp_column(path, sid, df.iloc[:, 0], _lines(2))
    return Series(series_id=sid, values=values, timestamps=ts)


def _read_long(
    path: Path, columns: Columns, series_id: str | None
) -> tuple[ColumnRoles, tuple[Series, ...]]:
    """A long frame (mamlctl, Nixtla or Prophet columns) from CSV or Parquet."""
    import pandas as pd

    if _is_parquet(path):
        try:
            df = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises many types for broken files
            msg = " ".join(str(err).split())[:200]
            raise IngestError(f"{path}: cannot read Parquet: {msg}") from None
        roles = columns.roles(list(df.columns), source=path)
    else:
        raw = _raw_header(path)
        roles = columns.roles(raw, source=path)
        text = {c for c in raw if norm(c) in (roles.id, roles.time)}
        df = _read_csv(path, dtype=dict.fromkeys(text, str))
    if len(df) == 0:
        raise IngestError(f"{path}: file holds no rows")
    sid = series_id or series_id_from_name(path)
    return roles, series_from_frame(df, roles, source=path, series_id=sid)
