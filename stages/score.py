"""The ``score`` stage: forecasts from the exported files, computed by the server's own runtime.

The scoring server answers ``POST /v1/score`` from a :class:`~mamlctl.serving.state.ServingState`
built from the registry's current models; :func:`forecast_series` builds the same state from
the same records and runs the same grouped ``run`` calls (:func:`mamlctl.serving.scoring.
run_groups`), so a figure computed here is what the server would answer, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError

if TYPE_CHECKING:
    from mamlctl.domain import AdaptedModelRecord
    from mamlctl.serving.state import ServingState


@dataclass(frozen=True, slots=True, kw_only=True)
class Forecasts:
    """Forecasts ``[n, H]`` (float32, raw units) of the series that have a loaded model, and why
    the others have none."""

    series_ids: tuple[str, ...]
    forecast: npt.NDArray[np.float32]
    sigma: npt.NDArray[np.float32]
    #: series id -> one line: no current model, its file failed to load, or too short a history
    missing: Mapping[str, str]
    #: series id -> ``adapted`` or ``zero-shot`` (as the served lineage says)
    adaptation: Mapping[str, str]


def serving_state(records: Sequence[AdaptedModelRecord], *, models_dir: Path) -> ServingState:
    """The state the server would build from ``records`` (files verified against their sha256,
    banked); series whose file failed are in its ``failures``."""
    from mamlctl.serving.state import build_state

    return build_state(records, models_dir=models_dir, fingerprint="score", generation=1)


def forecast_series(
    records: Sequence[AdaptedModelRecord],
    *,
    models_dir: Path,
    histories: Mapping[str, npt.ArrayLike],
) -> Forecasts:
    """Forecast every series of ``histories`` from its last L values with its current model.

    ``records`` are the current adapted models (e.g. ``current_adapted_models``); series with no
    record, a file that does not load, or fewer than L values are listed in ``missing``.
    """
    from mamlctl.serving.scoring import run_groups

    state = serving_state(records, models_dir=models_dir)
    served: list[str] = []
    windows: list[npt.NDArray[np.float32]] = []
    missing: dict[str, str] = {}
    for sid, values in histories.items():
        entry = state.entries.get(sid)
        if entry is None:
            missing[sid] = state.failures.get(sid, "no current model")
            continue
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] < entry.window:
            missing[sid] = f"{arr.shape[0]} values; its model takes a window of {entry.window}"
            continue
        windows.append(arr[-entry.window :].astype(np.float32))
        served.append(sid)
    if not served:
        return Forecasts(
            series_ids=(),
            forecast=np.empty((0, 0), np.float32),
            sigma=np.empty((0, 0), np.float32),
            missing=missing,
            adaptation={},
        )
    entries = [state.entries[sid] for sid in served]
    if len({e.window for e in entries}) != 1:
        raise InputError("forecast_series takes series of one window length at a time")
    forecast, sigma = run_groups(state, entries, np.stack(windows))
    return Forecasts(
        series_ids=tuple(served),
        forecast=forecast,
        sigma=sigma,
        missing=missing,
        adaptation={e.series_id: str(e.lineage.get("adaptation", "adapted")) for e in entries},
    )
