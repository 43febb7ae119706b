"""The plot stage: one series' history, its served one-step forecast with a band, its flags.

What is drawn (and returned, so that a caller or a test can check it):

* the stored points (``values`` against ``timestamps``, or positions for a series stored by
  positions), from ``since`` on;
* the one-step forecast of the series' *current* model at every point with a full window
  before it, and the band ``forecast +- k * sigma`` (the model's ``sigma`` output). The window
  is the one the observe loop holds (:mod:`mamlctl.timeseries.stream_detector`): the stored
  values, where a flagged-and-replaced point holds its forecast. For points observed while this
  model was current this is exactly the forecast the server answered (a flagged point's record
  carries it); for older points it is what the current model says of them;
* the flagged points (the registry's anomaly records), marked.

matplotlib with the headless ``Agg`` backend; the figure is ``width`` x ``height`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from mamlctl.settings import Settings

FloatArray = npt.NDArray[np.float64]

__all__ = ["PlotData", "plot_series"]

#: anomaly records read per series (the registry's listing limit)
MAX_RECORDS = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class PlotData:
    """The arrays drawn (from ``since`` on), and where the picture was written."""

    series_id: str
    path: Path
    x: npt.NDArray[np.datetime64] | npt.NDArray[np.int64]  # timestamps, or positions
    positions: npt.NDArray[np.int64]
    values: FloatArray
    forecast: FloatArray  # NaN where the window is not full
    sigma: FloatArray
    k: float
    flagged_positions: npt.NDArray[np.int64]
    flagged_values: FloatArray
    flagged_forecast: FloatArray  # the records' forecasts (what the server answered)


def plot_series(
    settings: Settings,
    series_id: str,
    out: Path,
    *,
    since: datetime | int | None = None,
    k: float = 3.0,
    width: int = 1200,
    height: int = 500,
) -> PlotData:
    """Draw ``series_id`` into ``out`` (PNG) and return what was drawn (see the module doc)."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.anomaly_queries import list_anomalies
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.observations import load_tails
    from mamlctl.registry.series_queries import load_series

    if not (k > 0 and np.isfinite(k)):
        raise InputError(f"band width k must be a positive number, got {k}")
    if width < 100 or height < 100:
        raise InputError(f"the picture must be at least 100 x 100 pixels, got {width} x {height}")
    with open_registry(settings) as factory, factory() as session:
        series = load_series(session, series_id)
        tail = load_tails(session, {series_id: len(series)})[series_id]
        records = list_anomalies(session, series_id=series_id, limit=MAX_RECORDS)
        current = [
            r for r in q.current_adapted_models(session, series.family) if r.series_id == series_id
        ]
    if not current:
        raise NotFoundError(
            f"series {series_id!r} has no current model to forecast with (run `mamlctl adapt`)"
        )
    model = current[0]
    values = np.asarray(series.values, dtype=np.float64)
    n = values.shape[0]
    held = np.where(np.isnan(tail.replacement), tail.values, tail.replacement)
    forecast, sigma = _one_step(settings.models_dir / model.path, held, model.window)

    positions = np.arange(n, dtype=np.int64)
    x = series.timestamps if series.timestamps is not None else positions
    start = _start(since, series.timestamps, n)
    by_position = {r.position: r for r in records if r.position >= start}
    flagged = np.array(sorted(by_position), dtype=np.int64)
    data = PlotData(
        series_id=series_id,
        path=out,
        x=x[start:],
        positions=positions[start:],
        values=values[start:],
        forecast=forecast[start:],
        sigma=sigma[start:],
        k=k,
        flagged_positions=flagged,
        flagged_values=np.array([by_position[p].value for p in flagged], dtype=np.float64),
        flagged_forecast=np.array([by_position[p].forecast for p in flagged], dtype=np.float64),
    )
    _draw(data, x[flagged] if flagged.size else x[:0], width=width, height=height)
    return data


def _start(
    since: datetime | int | None, timestamps: npt.NDArray[np.datetime64] | None, n: int
) -> int:
    if since is None:
        return 0
    if timestamps is None:
        if not isinstance(since, int):
            raise InputError("this series is stored by positions: give --since as a position")
        return min(max(since, 0), n)
    if isinstance(since, int):
        raise InputError("this series is stored with timestamps: give --since as ISO 8601")
    return int(np.searchsorted(timestamps, np.datetime64(since.replace(tzinfo=None), "us")))


def _one_step(path: Path, held: FloatArray, window: int) -> tuple[FloatArray, FloatArray]:
    """Column 0 of the file's ``forecast`` and ``sigma`` for every point with ``window``
    values before it (NaN otherwise), in chunks."""
    import onnxruntime as ort
    from numpy.lib.stride_tricks import sliding_window_view

    n = held.shape[0]
    forecast = np.full(n, np.nan)
    sigma = np.full(n, np.nan)
    if n <= window:
        return forecast, sigma
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    windows = sliding_window_view(held[:-1], window).astype(np.float32)  # row i -> point i+L
    for i in range(0, windows.shape[0], 4096):
        chunk = np.ascontiguousarray(windows[i : i + 4096])
        f, s = session.run(["forecast", "sigma"], {"window": chunk})
        forecast[window + i : window + i + chunk.shape[0]] = f[:, 0]
        sigma[window + i : window + i + chunk.shape[0]] = s[:, 0]
    return forecast, sigma


def _draw(data: PlotData, flagged_x: npt.NDArray[np.generic], *, width: int, height: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(data.x, data.values, color="black", linewidth=0.8, label="observed")
    ax.plot(data.x, data.forecast, color="tab:blue", linewidth=0.8, label="one-step forecast")
    ax.fill_between(
        data.x,
        data.forecast - data.k * data.sigma,
        data.forecast + data.k * data.sigma,
        color="tab:blue",
        alpha=0.2,
        linewidth=0,
        label=f"forecast ± {data.k:g}·sigma",
    )
    if data.flagged_positions.size:
        ax.scatter(flagged_x, data.flagged_values, color="tab:red", s=18, zorder=3, label="flagged")
    ax.set_title(f"{data.series_id}: {data.flagged_positions.size} flagged")
    ax.set_xlabel("timestamp" if np.issubdtype(data.x.dtype, np.datetime64) else "position")
    ax.legend(loc="upper left", fontsize="small")
    fig.autofmt_xdate()
    data.path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(data.path, dpi=dpi, format="png")
