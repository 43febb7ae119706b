"""Reading the Numenta Anomaly Benchmark corpus and writing NAB's results layout.

The corpus root holds ``data/<category>/<name>.csv.gz`` (``timestamp,value``) and
``labels/combined_windows.json``. Labels are keyed by the path relative to ``data/`` with the
original ``.csv`` suffix (``"realKnownCause/nyc_taxi.csv"``), so a file's key is its relative
path minus ``.gz``. Window bounds are inclusive timestamps written with a ``.000000`` suffix;
every bound is a timestamp of its file. Plain ``.csv`` files are accepted too.

Results layout (NAB's): ``<out>/results/<detector>/<category>/<detector>_<name>.csv`` with
columns ``timestamp,value,anomaly_score,label`` (``label`` 1 inside a window).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError, NotFoundError

WINDOWS_FILE = Path("labels") / "combined_windows.json"
#: NAB's probationary share of each file: not scored, free for a detector to learn from.
PROBATIONARY_PERCENT = 0.15

__all__ = [
    "PROBATIONARY_PERCENT",
    "NabFile",
    "NabSeries",
    "list_files",
    "load_windows",
    "probationary_length",
    "read_file",
    "read_results",
    "resolve_root",
    "results_path",
    "window_indices",
    "window_labels",
    "write_results",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class NabFile:
    """One corpus file: its label key (``category/name.csv``) and where it lies on disk."""

    key: str
    path: Path

    @property
    def category(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        """File name with the ``.csv`` suffix, e.g. ``nyc_taxi.csv``."""
        return self.key.split("/", 1)[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class NabSeries:
    """A file's points and its windows as inclusive ``(first, last)`` row indices."""

    key: str
    timestamps: npt.NDArray[np.datetime64]
    values: npt.NDArray[np.float64]
    windows: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return int(self.values.shape[0])


def resolve_root(path: str | Path) -> Path:
    """The corpus root: ``path`` itself or ``path/nab``, whichever holds the windows file."""
    base = Path(path)
    for candidate in (base, base / "nab"):
        if (candidate / WINDOWS_FILE).is_file() and (candidate / "data").is_dir():
            return candidate
    raise NotFoundError(
        f"no NAB corpus under {base}: expected data/ and {WINDOWS_FILE} there or in {base}/nab"
    )


def load_windows(root: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Windows per file key, bounds as ``YYYY-MM-DD HH:MM:SS`` strings (``.000000`` dropped)."""
    path = resolve_root(root) / WINDOWS_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read NAB windows {path}: {exc}") from exc
    out: dict[str, list[tuple[str, str]]] = {}
    for key, pairs in raw.items():
        try:
            out[str(key)] = [(_strip_micro(a), _strip_micro(b)) for a, b in pairs]
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}: windows of {key} are not [start, end] pairs") from exc
    return out


def _strip_micro(stamp: str) -> str:
    s = str(stamp)
    return s[: -len(".000000")] if s.endswith(".000000") else s


def list_files(root: str | Path) -> list[NabFile]:
    """All data files that have a label key, sorted by key; every key must have a file."""
    base = resolve_root(root)
    keys = set(load_windows(base))
    found: dict[str, Path] = {}
    for path in sorted((base / "data").rglob("*.csv*")):
        rel = path.relative_to(base / "data").as_posix()
        key = rel[: -len(".gz")] if rel.endswith(".csv.gz") else rel
        if key.endswith(".csv") and key in keys:
            found[key] = path
    missing = sorted(keys - set(found))
    if missing:
        raise NotFoundError(f"NAB label key {missing[0]} has no file under {base / 'data'}")
    return [NabFile(key=k, path=found[k]) for k in sorted(found)]


def read_file(nab_file: NabFile, windows: list[tuple[str, str]]) -> NabSeries:
    """Read a file's ``timestamp,value`` rows and locate its windows."""
    import pandas as pd

    try:
        frame = pd.read_csv(nab_file.path, index_col=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read NAB file {nab_file.path}: {exc}") from exc
    if list(frame.columns[:2]) != ["timestamp", "value"]:
        raise InputError(f"{nab_file.path}: expected columns timestamp,value")
    ts = pd.to_datetime(frame["timestamp"]).to_numpy(dtype="datetime64[ns]")
    values = frame["value"].to_numpy(dtype=np.float64)
    return NabSeries(
        key=nab_file.key,
        timestamps=ts,
        values=values,
        windows=window_indices(ts, windows, key=nab_file.key),
    )


def window_indices(
    timestamps: npt.NDArray[np.datetime64],
    windows: list[tuple[str, str]],
    *,
    key: str,
) -> tuple[tuple[int, int], ...]:
    """Inclusive row-index pairs of ``windows``, whose bounds must be timestamps of the file."""
    ts = np.asarray(timestamps, dtype="datetime64[ns]")
    out: list[tuple[int, int]] = []
    for start, end in windows:
        pair = []
        for bound in (start, end):
            stamp = np.datetime64(bound, "ns")
            i = int(np.searchsorted(ts, stamp))
            if i >= ts.shape[0] or ts[i] != stamp:
                raise InputError(f"{key}: window bound {bound} is not a timestamp of the file")
            pair.append(i)
        out.append((pair[0], pair[1]))
    return tuple(out)


def window_labels(n: int, windows: tuple[tuple[int, int], ...]) -> npt.NDArray[np.int64]:
    """0/1 per row: 1 inside a window (NAB's ``label`` column)."""
    labels = np.zeros(n, dtype=np.int64)
    for a, b in windows:
        labels[a : b + 1] = 1
    return labels


def probationary_length(n: int, percent: float = PROBATIONARY_PERCENT) -> int:
    """Rows NAB does not score: ``min(floor(percent * n), percent * 5000)``."""
    return int(min(math.floor(percent * n), percent * 5000))


def results_path(out_dir: str | Path, detector: str, key: str) -> Path:
    """``<out>/results/<detector>/<category>/<detector>_<name>.csv``."""
    category, name = key.split("/", 1)
    return Path(out_dir) / "results" / detector / category / f"{detector}_{name}"


def write_results(
    out_dir: str | Path,
    detector: str,
    series: NabSeries,
    anomaly_scores: npt.ArrayLike,
) -> Path:
    """Write one file's results CSV in NAB's layout; returns its path."""
    import pandas as pd

    scores = np.asarray(anomaly_scores, dtype=np.float64)
    if scores.shape != series.values.shape:
        raise InputError(f"{series.key}: {scores.shape[0]} scores for {len(series)} rows")
    if not np.all((scores >= 0) & (scores <= 1)):
        raise InputError(f"{series.key}: anomaly scores must lie in [0, 1]")
    path = results_path(out_dir, detector, series.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "timestamp": pd.to_datetime(series.timestamps).strftime("%Y-%m-%d %H:%M:%S"),
            "value": series.values,
            "anomaly_score": scores,
            "label": window_labels(len(series), series.windows),
        }
    ).to_csv(path, index=False)
    return path


def read_results(out_dir: str | Path, detector: str, key: str) -> npt.NDArray[np.float64]:
    """The ``anomaly_score`` column of one results file."""
    import pandas as pd

    path = results_path(out_dir, detector, key)
    if not path.is_file():
        raise NotFoundError(f"no results for {key} at {path}; run the detector first")
    frame = pd.read_csv(path, index_col=False)
    if "anomaly_score" not in frame.columns:
        raise InputError(f"{path} has no anomaly_score column")
    scores: npt.NDArray[np.float64] = frame["anomaly_score"].to_numpy(dtype=np.float64)
    return scores
