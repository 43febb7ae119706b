"""The NAB protocol harness: run streaming detectors over the corpus, write, score, tabulate.

A detector is any ``Detector``: one corpus file (its values and timestamps) and its
probationary length in, one anomaly score in [0, 1] per row out. It must score each row from
the past only; the probationary rows are not scored and may be used to learn. ``run_nab``
writes NAB's results layout (``<out>/results/<detector>/<category>/<detector>_<file>.csv``)
and scores each detector with ``nab_scoring`` (corpus-wide threshold per profile, normalised
so the null detector is 0 and the perfect one 100).

Two reference detectors come with it: ``null_detector`` (the normalisation's 0) and
``windowed_gaussian``, NAB's published baseline (a Gaussian over up to 6400 past values,
refreshed every 100 rows once full; score ``1 - Q(|z|)``). Scored here it gets 40.13 standard;
NAB's published 39.65 comes from the same scores rounded to 12 digits by NAB's Python 2 CSV
writer (``tests/evaluation/test_nab_reference.py`` reproduces that figure exactly).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError

from .nab_data import (
    NabSeries,
    list_files,
    load_windows,
    probationary_length,
    read_file,
    write_results,
)
from .nab_scoring import PROFILES, CostProfile, NabReport, prepare_file, score_corpus

FloatArray = npt.NDArray[np.float64]
Detector = Callable[[NabSeries, int], FloatArray]

__all__ = [
    "Detector",
    "NabRun",
    "fold_of",
    "load_corpus",
    "markdown_table",
    "null_detector",
    "run_nab",
    "windowed_gaussian",
]

_erfc = np.frompyfunc(math.erfc, 1, 1)


def null_detector(series: NabSeries, probation: int) -> FloatArray:
    """A constant score: NAB's null detector, the 0 of the normalised score."""
    return np.full(len(series), 0.5)


def windowed_gaussian(
    series: NabSeries, probation: int, *, size: int = 6400, step: int = 100
) -> FloatArray:
    """NAB's windowedGaussian baseline: row ``i`` is scored ``1 - Q(|z|)`` against the mean
    and standard deviation of the window as it stood before row ``i`` (growing to ``size``
    values, then refreshed every ``step`` rows); the first row scores 0."""
    values = series.values
    n = values.shape[0]
    mean = np.zeros(n)
    std = np.ones(n)
    refresh = [*range(1, min(size, n) + 1), *range(size + step, n + 1, step)]
    bounds = [*refresh, n + 1]
    for k, end in enumerate(refresh):
        window = values[max(0, end - size) : end]
        m, s = float(np.mean(window)), float(np.std(window))
        mean[end : bounds[k + 1]] = m
        std[end : bounds[k + 1]] = s if s != 0.0 else 1e-6
    mirrored = np.where(values < mean, 2 * mean - values, values)
    z = (mirrored - mean) / std
    scores = 1.0 - 0.5 * np.asarray(_erfc(z / math.sqrt(2.0)), dtype=np.float64)
    if n:
        scores[0] = 0.0
    return np.asarray(scores, dtype=np.float64)


def fold_of(keys: Sequence[str], folds: int) -> dict[str, int]:
    """Fold of each file for cross-fitting (a file is scored by an initializer trained on the
    other folds' files): its rank among the sorted keys modulo ``folds``."""
    return {k: i % folds for i, k in enumerate(sorted(keys))}


def load_corpus(root: str | Path) -> list[NabSeries]:
    """Every labelled corpus file with its windows, sorted by key."""
    windows = load_windows(root)
    return [read_file(f, windows[f.key]) for f in list_files(root)]


@dataclass(frozen=True, slots=True, kw_only=True)
class NabRun:
    """Per detector: its NAB report and the wall time of its detection pass."""

    reports: dict[str, NabReport]
    wall_s: dict[str, float]


def run_nab(
    corpus: Iterable[NabSeries],
    detectors: Mapping[str, Detector],
    *,
    out_dir: str | Path | None = None,
    profiles: Iterable[CostProfile] = tuple(PROFILES.values()),
    on_file: Callable[[str, str], None] | None = None,
) -> NabRun:
    """Run each detector over every file, optionally write results, and score the corpus."""
    files = list(corpus)
    if not files:
        raise InputError("the NAB corpus is empty")
    chosen = tuple(profiles)
    reports: dict[str, NabReport] = {}
    walls: dict[str, float] = {}
    for name, detect in detectors.items():
        if not name or "/" in name or "_" in name:
            # NAB derives the detector name from the results file name up to the first "_".
            raise InputError(f"detector name {name!r} must be non-empty, without '/' or '_'")
        swept = []
        elapsed = 0.0
        for series in files:
            if on_file is not None:
                on_file(name, series.key)
            probation = probationary_length(len(series))
            start = time.perf_counter()
            scores = np.asarray(detect(series, probation), dtype=np.float64)
            elapsed += time.perf_counter() - start
            if scores.shape != (len(series),) or not np.all((scores >= 0) & (scores <= 1)):
                raise InputError(
                    f"detector {name} must return {len(series)} scores in [0, 1] for {series.key}"
                )
            if out_dir is not None:
                write_results(out_dir, name, series, scores)
            swept.append(prepare_file(series.key, scores, series.windows))
        reports[name] = score_corpus(swept, profiles=chosen)
        walls[name] = elapsed
    run = NabRun(reports=reports, wall_s=walls)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "nab_scores.md").write_text(markdown_table(run))
        payload = {
            name: {
                p: {
                    "score": r.score,
                    "threshold": r.threshold,
                    "raw": r.raw,
                    "tp": r.tp,
                    "fp": r.fp,
                    "fn": r.fn,
                    "tn": r.tn,
                }
                for p, r in report.results.items()
            }
            for name, report in reports.items()
        }
        (out / "nab_scores.json").write_text(json.dumps(payload, indent=2) + "\n")
    return run


def markdown_table(run: NabRun) -> str:
    """Normalised NAB scores per detector and profile, best standard score first."""
    names = list(next(iter(run.reports.values())).results)
    lines = [
        "| detector | " + " | ".join(names) + " | wall s |",
        "| --- | " + " | ".join("---:" for _ in names) + " | ---: |",
    ]
    ranked = sorted(run.reports.items(), key=lambda kv: -kv[1].results[names[0]].score)
    for name, report in ranked:
        cells = " | ".join(f"{report.results[p].score:.2f}" for p in names)
        lines.append(f"| {name} | {cells} | {run.wall_s[name]:.1f} |")
    return "\n".join(lines) + "\n"
