"""The ``forecast`` and ``detect`` stages: Nixtla-shaped frames from the exported model files.

Both run the files through the scoring server's own runtime (a
:class:`~mamlctl.serving.state.ServingState` built from the current adapted-model records, as
:func:`mamlctl.stages.score.forecast_series` does), so every figure is what ``POST /v1/score``
would answer for the same window.

**forecast** -- for each series, its last L stored values -> ``unique_id, ds, yhat`` for the
next H steps, plus ``yhat-lo-<l>``/``yhat-hi-<l>`` per level. ``ds`` is real time: the last
stored timestamp + k * the series' interval (its recorded interval, else the median step);
integer positions (last position + k) for a series ingested without timestamps.

*Intervals* are ``yhat -/+ m(l) * sigma`` with the served ``sigma``
(:func:`interval_bounds`). For a ``mean`` head ``sigma`` at step h is the series'
``residual_scale`` (the robust 1.4826 * MAD scale of the adapted model's one-step-ahead
residuals on points it was not fitted on) times the family's growth at h, and ``m(l)`` the
family's calibrated multiplier (the file's ``band``), both calibrated by ``train`` on its
held-out series (:mod:`mamlctl.maml.horizon_band`); on held-out M4 Hourly the 80 and 95 % bands
cover within 2 points of nominal (``benchmarks/interval_coverage.py``, RESULTS.md). Files of
older initializers and of a ``gaussian`` head (whose ``sigma`` is its predicted standard
deviation per step) have no band: ``m(l)`` is the Gaussian ``z_{(1+l)/2}``.

**detect** -- for each series, every stored point after the model's support end (and with L
points before it) is scored one step ahead from the window of the L points before it:
``unique_id, ds, y, yhat, anomaly_score, is_anomaly`` with
:func:`mamlctl.timeseries.anomaly.anomaly_score` of ``y - yhat`` over the served ``sigma`` of
step 1 (the residual scale for a mean head) and :func:`~mamlctl.timeseries.anomaly.flag` at the
model's ``threshold``: the server's rule for an ``actual`` of one value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError, NotFoundError

if TYPE_CHECKING:
    import pandas as pd

    from mamlctl.domain import AdaptedModelRecord, Series
    from mamlctl.serving.state import ServingState
    from mamlctl.settings import Settings

#: Windows per ``run`` call when scoring history (bounds memory on long series).
DETECT_CHUNK = 4096
FORECAST_COLUMNS = ("unique_id", "ds", "yhat")
DETECT_COLUMNS = ("unique_id", "ds", "y", "yhat", "anomaly_score", "is_anomaly")


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A series to forecast or scan: its stored points, interval and current model."""

    series: Series
    interval_seconds: float | None
    record: AdaptedModelRecord


def parse_levels(levels: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"80,95"`` (or ``[80, 95]``) -> ``(80.0, 95.0)``: each a percentage strictly between 0
    and 100; duplicates dropped, order kept."""
    if levels is None:
        return ()
    parts: list[Any] = (
        [p.strip() for p in levels.split(",") if p.strip()]
        if isinstance(levels, str)
        else list(levels)
    )
    out: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except (TypeError, ValueError):
            raise InputError(
                f"invalid level {part!r}: give percentages between 0 and 100, e.g. 80,95"
            ) from None
        if not (math.isfinite(value) and 0 < value < 100):
            raise InputError(f"invalid level {part!r}: a level must lie strictly between 0 and 100")
        if value not in out:
            out.append(value)
    if isinstance(levels, str) and not out:
        raise InputError("empty --level: give percentages between 0 and 100, e.g. 80,95")
    return tuple(out)


def level_label(level: float) -> str:
    """``80.0`` -> ``"80"``, ``99.5`` -> ``"99.5"`` (the column suffix)."""
    return f"{level:g}"


def load_targets(
    settings: Settings, *, family: str | None = None, series_ids: Sequence[str] = ()
) -> list[Target]:
    """The series selected (default: every series with a current model, of ``family`` when
    given), with their points and current model. An unknown family or series, or a selected
    series without a current model, is :class:`NotFoundError`."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction

    with transaction(settings, create=False) as session:
        if family is not None:
            q.get_family(session, family)  # NotFoundError naming the known families
        records = {r.series_id: r for r in q.current_adapted_models(session, family)}
        if series_ids:
            ids = list(dict.fromkeys(series_ids))
            for sid in ids:
                info = q.get_series(session, sid)  # NotFoundError for an unknown series
                if family is not None and info.family != family:
                    raise NotFoundError(f"series {sid!r} is not in family {family!r}")
                if sid not in records:
                    raise NotFoundError(
                        f"series {sid!r} has no adapted model yet (run `mamlctl adapt "
                        f"{info.family or '<family>'}`)"
                    )
        else:
            ids = list(records)
            if not ids:
                where = f"family {family!r}" if family is not None else "the registry"
                raise NotFoundError(f"{where} has no adapted model yet (run `mamlctl adapt`)")
        series = q.load_many_series(session, ids)
        intervals = {sid: q.get_series(session, sid).interval_seconds for sid in ids}
    return [
        Target(series=s, interval_seconds=intervals[s.series_id], record=records[s.series_id])
        for s in series
    ]


def _state(targets: Sequence[Target], settings_models_dir: Any) -> ServingState:
    from mamlctl.stages.score import serving_state

    state = serving_state([t.record for t in targets], models_dir=settings_models_dir)
    for t in targets:
        if t.series.series_id not in state.entries:
            reason = state.failures.get(t.series.series_id, "its model file did not load")
            raise NotFoundError(f"series {t.series.series_id!r}: {reason}")
    return state


def future_ds(series: Series, interval_seconds: float | None, horizon: int) -> Any:
    """The ``horizon`` stamps after the series' last point: datetime64[us] (last + k * interval)
    for a timestamped series, int64 positions (last + k) otherwise."""
    k = np.arange(1, horizon + 1, dtype=np.int64)
    if series.timestamps is None:
        return len(series) - 1 + k
    ts = series.timestamps.astype("datetime64[us]")
    step = interval_seconds
    if step is None and ts.shape[0] >= 2:
        step = float(np.median(np.diff(ts).astype(np.int64))) / 1e6
    if step is None or not step > 0:
        raise InputError(
            f"series {series.series_id!r}: no sampling interval to place future timestamps "
            "(ingest it with --interval)"
        )
    return ts[-1] + k * np.timedelta64(round(step * 1e6), "us")


def forecast_frame(
    targets: Sequence[Target], *, models_dir: Any, levels: Sequence[float] = ()
) -> pd.DataFrame:
    """``unique_id, ds, yhat[, yhat-lo-<l>, yhat-hi-<l>...]``: H rows per series, in order."""
    import pandas as pd

    from mamlctl.serving.scoring import run_groups

    state = _state(targets, models_dir)
    parts: list[pd.DataFrame] = []
    for t in targets:
        sid = t.series.series_id
        entry = state.entries[sid]
        if len(t.series) < entry.window:
            raise InputError(
                f"series {sid!r} holds {len(t.series)} points; its model needs the last "
                f"{entry.window}"
            )
        window = t.series.values[-entry.window :].astype(np.float32)[None, :]
        forecast, sigma = run_groups(state, [entry], window)
        yhat = forecast[0].astype(np.float64)
        sig = sigma[0].astype(np.float64)
        cols: dict[str, Any] = {
            "unique_id": sid,
            "ds": future_ds(t.series, t.interval_seconds, yhat.shape[0]),
            "yhat": yhat,
        }
        for level in levels:
            lo, hi = interval_bounds(yhat, sig, level, entry.band)
            cols[f"yhat-lo-{level_label(level)}"] = lo
            cols[f"yhat-hi-{level_label(level)}"] = hi
        parts.append(pd.DataFrame(cols))
    return _concat(parts, [*FORECAST_COLUMNS, *_level_columns(levels)])


def interval_bounds(
    yhat: npt.ArrayLike,
    sigma: npt.ArrayLike,
    level: float,
    band: Sequence[tuple[float, float]] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The ``level`` % band (a percentage) around forecasts ``yhat`` with the served ``sigma``
    (same shape): ``yhat -/+ m(l) * sigma``, ``m`` the model's calibrated ``band`` multiplier
    (:func:`mamlctl.contract.band_multiplier`; Gaussian ``z_{(1+l)/2}`` without one). The one
    rule of ``forecast --level``, also what the interval evaluation scores."""
    from mamlctl.contract import band_multiplier

    mid = np.asarray(yhat, dtype=np.float64)
    half = band_multiplier(level, band) * np.asarray(sigma, dtype=np.float64)
    return mid - half, mid + half


def _level_columns(levels: Sequence[float]) -> list[str]:
    return [f"yhat-{side}-{level_label(level)}" for level in levels for side in ("lo", "hi")]


def detect_frame(
    targets: Sequence[Target], *, models_dir: Any, since: str | None = None
) -> pd.DataFrame:
    """``unique_id, ds, y, yhat, anomaly_score, is_anomaly`` for every point after each model's
    support end (and at or after ``since``), scored one step ahead as the server scores."""
    import pandas as pd

    from mamlctl.timeseries.anomaly import anomaly_score, flag

    state = _state(targets, models_dir)
    parts: list[pd.DataFrame] = []
    for t in targets:
        s = t.series
        entry = state.entries[s.series_id]
        L = entry.window
        first = max(L, (t.record.support_end + 1) if t.record.support_end is not None else L)
        positions = np.arange(first, len(s), dtype=np.int64)
        positions = positions[_since_mask(s, positions, since)]
        if positions.size == 0:
            continue
        values32 = s.values.astype(np.float32)
        yhat = np.empty(positions.size, dtype=np.float64)
        sigma = np.empty(positions.size, dtype=np.float64)
        runtime = state.runtimes[entry.group]
        for a in range(0, positions.size, DETECT_CHUNK):
            p = positions[a : a + DETECT_CHUNK]
            windows = np.ascontiguousarray(values32[p[:, None] - L + np.arange(L)[None, :]])
            rows = np.full(p.size, entry.row, dtype=np.int64)
            f, sg = runtime.run(windows, rows)
            yhat[a : a + p.size] = f[:, 0].astype(np.float64)
            sigma[a : a + p.size] = sg[:, 0].astype(np.float64)
        y = s.values[positions]
        scores = anomaly_score(y - yhat, sigma)
        parts.append(
            pd.DataFrame(
                {
                    "unique_id": s.series_id,
                    "ds": s.timestamps[positions] if s.timestamps is not None else positions,
                    "y": y,
                    "yhat": yhat,
                    "anomaly_score": scores,
                    "is_anomaly": flag(scores, entry.threshold),
                }
            )
        )
    return _concat(parts, list(DETECT_COLUMNS))


def _since_mask(series: Series, positions: npt.NDArray[np.int64], since: str | None) -> Any:
    """Which ``positions`` are at or after ``since`` (an ISO 8601 time, or an integer position
    for a series without timestamps)."""
    if since is None:
        return np.ones(positions.size, dtype=bool)
    text = since.strip()
    if series.timestamps is None:
        try:
            return positions >= int(text)
        except ValueError:
            raise InputError(
                f"--since {since!r}: series {series.series_id!r} has integer positions, not "
                "timestamps; give a position"
            ) from None
    return series.timestamps[positions].astype("datetime64[us]") >= parse_since(since)


def parse_since(since: str) -> np.datetime64:
    """An ISO 8601 time -> naive UTC datetime64[us] (how timestamps are stored)."""
    try:
        stamp = datetime.fromisoformat(since.strip())
    except ValueError:
        raise InputError(
            f"invalid --since {since!r}: use an ISO 8601 time, e.g. 2024-05-01T00:00"
        ) from None
    if stamp.tzinfo is not None:
        from datetime import UTC

        stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(stamp, "us")


def _concat(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """One frame; ``ds`` of mixed kinds (timestamps and positions) becomes text."""
    import pandas as pd

    if not parts:
        return pd.DataFrame({c: [] for c in columns})
    kinds = {p["ds"].dtype.kind for p in parts}
    if len(kinds) > 1:
        for p in parts:
            p["ds"] = [_ds_text(v) for v in p["ds"]]
    return pd.concat(parts, ignore_index=True)[columns]


def _ds_text(value: Any) -> str:
    if isinstance(value, np.datetime64 | datetime) or hasattr(value, "isoformat"):
        return str(np.datetime64(value, "us")).replace(" ", "T")
    return str(int(value))


def write_frame(df: pd.DataFrame, path: Any) -> None:
    """Write ``df`` as CSV or Parquet by the file's suffix (``.csv``, ``.csv.gz``, ``.parquet``,
    ``.pq``); timestamps as ISO 8601 in CSV."""
    from pathlib import Path

    p = Path(path)
    name = p.name.lower()
    if name.endswith((".parquet", ".pq")):
        df.to_parquet(p, index=False)
    elif name.endswith((".csv", ".csv.gz")):
        _iso_ds(df).to_csv(p, index=False)
    else:
        raise InputError(f"--out {path}: use a .csv, .csv.gz or .parquet file name")


def csv_text(df: pd.DataFrame) -> str:
    """The frame as CSV text (timestamps as ISO 8601)."""
    return str(_iso_ds(df).to_csv(index=False))


def _iso_ds(df: pd.DataFrame) -> pd.DataFrame:
    if len(df) == 0 or df["ds"].dtype.kind != "M":
        return df
    out = df.copy()
    text = out["ds"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    out["ds"] = text.str.removesuffix(".000000")
    return out


def records_json(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: ``ds`` as an ISO 8601 wall-clock string (or an integer
    position), floats as floats, flags as booleans."""
    out: list[dict[str, Any]] = []
    cols = list(df.columns)
    ds_is_time = df["ds"].dtype.kind == "M" if len(df) else False
    for row in df.itertuples(index=False, name=None):
        doc = dict(zip(cols, row, strict=True))
        ds = doc["ds"]
        if ds_is_time:
            doc["ds"] = ds.isoformat()
        elif isinstance(ds, np.integer):
            doc["ds"] = int(ds)
        for k, v in doc.items():
            if isinstance(v, np.floating):
                doc[k] = float(v)
            elif isinstance(v, np.bool_):
                doc[k] = bool(v)
        out.append(doc)
    return out
