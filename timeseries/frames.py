"""DataFrame -> series: the column roles of a long frame and the strict cell conversions.

The one place that turns a pandas frame into :class:`~mamlctl.domain.Series`, for files (the
readers) and for frames handed to the Python API (:func:`mamlctl.ingest_frame`) alike.

Column roles (names compared stripped and case-insensitively):

* **id**: ``series_id`` (mamlctl's long format) or ``unique_id`` (Nixtla); none = the frame
  holds one series, whose id the caller gives (the file name, ``--series-id``);
* **time**: ``timestamp`` or ``ds`` (Nixtla, Prophet); none = integer positions;
* **value**: ``value`` or ``y`` (Nixtla, Prophet).

Explicit names (``--id-col``/``--time-col``/``--value-col``) override the detection. Rows of one
series stay in frame order (non-monotonic timestamps are an error later, never sorted).
Values are float64 with NaN where a cell was empty, for the validation to reject or fill; text
that is not a number, a timestamp that does not parse, or an id holding NUL is an
:class:`~mamlctl.errors.IngestError` naming the source, series and row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mamlctl.domain import Series
from mamlctl.errors import IngestError

Where = Callable[[int], str]

ID_NAMES = ("series_id", "unique_id")
TIME_NAMES = ("timestamp", "ds")
VALUE_NAMES = ("value", "y")


def norm(name: object) -> str:
    """A column name as compared: stripped, lower case (quotes of a CSV header removed)."""
    return str(name).strip().strip('"').strip().lower()


@dataclass(frozen=True, slots=True)
class ColumnRoles:
    """Which (normalised) column holds the id (None: one series), the time (None: integer
    positions) and the value."""

    id: str | None
    time: str | None
    value: str


def resolve_roles(
    columns: Sequence[object],
    *,
    source: object,
    id_col: str | None = None,
    time_col: str | None = None,
    value_col: str | None = None,
) -> ColumnRoles:
    """The column roles of a frame with these columns; explicit names win over detection."""
    have = [norm(c) for c in columns]

    def pick(given: str | None, names: tuple[str, ...], flag: str) -> str | None:
        if given is not None:
            if norm(given) not in have:
                raise IngestError(
                    f"{source}: no column {given!r} ({flag}); columns are {', '.join(have)[:120]}"
                )
            return norm(given)
        return next((n for n in names if n in have), None)

    value = pick(value_col, VALUE_NAMES, "--value-col")
    if value is None:
        raise IngestError(
            f"{source}: no value column in {', '.join(have)[:120]!r}: expected value or y "
            "(or pass --value-col)"
        )
    roles = ColumnRoles(
        id=pick(id_col, ID_NAMES, "--id-col"),
        time=pick(time_col, TIME_NAMES, "--time-col"),
        value=value,
    )
    used = [r for r in (roles.id, roles.time, roles.value) if r is not None]
    if len(set(used)) != len(used):
        raise IngestError(f"{source}: one column cannot hold two roles ({', '.join(used)})")
    return roles


def frame_kind(roles: ColumnRoles) -> str:
    """``long``, ``nixtla`` or ``prophet``: what the columns look like (for reports)."""
    if roles.id is None:
        return "prophet"
    return "nixtla" if roles.id == "unique_id" else "long"


def series_from_frame(
    df: Any,
    roles: ColumnRoles,
    *,
    source: object,
    series_id: str | None = None,
    first_line: int = 2,
) -> tuple[Series, ...]:
    """The frame's series, in order of first appearance. ``series_id`` names the one series of
    a frame without an id column; ``first_line`` is the line (or row) number of the first row in
    error messages (2 for a CSV with a header, 1 for a frame)."""
    df = df.copy(deep=False)
    df.columns = [norm(c) for c in df.columns]
    if len(df) == 0:
        raise IngestError(f"{source}: holds no rows")
    if roles.id is None:
        if not series_id:
            raise IngestError(f"{source}: no id column (unique_id/series_id): give a series id")
        groups: dict[str, npt.NDArray[np.intp]] = {series_id: np.arange(len(df))}
    else:
        ids = text_ids(source, df[roles.id])
        if ids.isna().any():
            i = int(np.flatnonzero(ids.isna().to_numpy())[0])
            raise IngestError(f"{source}: empty {roles.id} at line {i + first_line}")
        groups = {str(k): v for k, v in df.groupby(ids.astype(str), sort=False).indices.items()}
    out: list[Series] = []
    for sid, idx in groups.items():
        part = df.iloc[idx]
        where: Where = lambda i, idx=idx: f"line {int(idx[i]) + first_line}"  # type: ignore[misc]  # noqa: E731
        values = numeric_column(source, sid, part[roles.value].reset_index(drop=True), where)
        ts = (
            timestamp_column(source, sid, part[roles.time].reset_index(drop=True), where)
            if roles.time is not None
            else None
        )
        out.append(Series(series_id=sid, values=values, timestamps=ts))
    return tuple(out)


# --- cells ----------------------------------------------------------------------------------


def numeric_column(path: object, series_id: str, raw: Any, where: Where) -> npt.NDArray[np.float64]:
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


def timestamp_column(
    path: object, series_id: str, raw: Any, where: Where
) -> npt.NDArray[np.datetime64]:
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


def text_ids(path: object, ids: Any) -> Any:
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
