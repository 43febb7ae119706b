"""The Numenta Anomaly Benchmark score, implemented from NAB's published definition (v1.1).

Per file of ``n`` rows with inclusive anomaly windows ``[l, r]`` (width ``w = r - l + 1``):

* The first ``P = min(floor(0.15 n), 750)`` rows are probationary and are not scored at all.
* ``sigma(x) = 2 / (1 + exp(5 x)) - 1`` (NAB's scaled sigmoid; -1 for ``x > 3``).
* A detection at row ``i`` inside a window is worth
  ``A_TP * sigma(-(r - i + 1) / w) / sigma(-1)``: exactly ``A_TP`` at the window's first row,
  falling towards 0 at its end. Only the best (earliest) detection of a window counts; a
  window without any detection costs ``-A_FN``.
* A detection at row ``i`` outside every window is a false positive worth
  ``A_FP * sigma((i - r') / (w' - 1))`` where ``[l', r']`` is the closest preceding window
  (a small penalty just after a window, ``-A_FP`` far from it), or ``-A_FP`` when no window
  precedes it. Every false positive counts.
* True negatives are worth nothing.

A detector emits an anomaly score in [0, 1] per row; a row is a detection when its score is
``>= threshold``. The threshold is chosen per application profile by sweeping every distinct
score over the whole corpus at once and keeping the best corpus total (ties: the higher
threshold). The corpus total is normalised as ``100 (raw - null) / (perfect - null)``:
``null`` is the optimised total of the null detector (a constant score, so it can only flag
everything or nothing), ``perfect`` is ``A_TP`` times the number of windows. So a detector
that flags nothing scores 0 and one that flags exactly the first row of every window 100.

Profiles (NAB ``config/profiles.json``): standard (A_TP 1, A_FP 0.11, A_FN 1),
reward_low_FP_rate (A_FP 0.22) and reward_low_FN_rate (A_FN 2); A_TN is 1 but unused.

One deliberate difference: NAB divides by zero for a false positive after a window of width
1; here such a window uses ``w' - 1 = 1``. NAB's own corpus has no such window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError

from .nab_data import PROBATIONARY_PERCENT, probationary_length

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

__all__ = [
    "PROFILES",
    "CostProfile",
    "FileSweep",
    "NabReport",
    "ProfileResult",
    "SweepCurve",
    "best_threshold",
    "file_score",
    "normalise",
    "prepare_file",
    "scaled_sigmoid",
    "score_corpus",
    "sweep",
]

#: Rows outside any window carry this window id.
OUTSIDE = -1


@dataclass(frozen=True, slots=True)
class CostProfile:
    """An application profile's weights of true positives, false positives, false negatives."""

    name: str
    tp: float
    fp: float
    fn: float
    tn: float = 1.0


PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile("standard", tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": CostProfile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": CostProfile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
}


def scaled_sigmoid(x: npt.ArrayLike) -> FloatArray:
    """NAB's ``2 sigmoid(-5 x) - 1``, and exactly -1 for ``x > 3``; elementwise."""
    arr = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        val = 2.0 / (1.0 + np.exp(5.0 * arr)) - 1.0
    return np.asarray(np.where(arr > 3.0, -1.0, val), dtype=np.float64)


_MAX_TP = float(scaled_sigmoid(-1.0))


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSweep:
    """One file's scorable rows (probation removed), ready for any profile and threshold.

    ``window`` is a corpus-unique-within-file window id per row (``-1`` outside), ``tp_unit``
    the TP value of a detection there for ``A_TP = 1``, ``fp_unit`` the FP value for
    ``A_FP = 1``; ``n_windows`` counts every window of the file, scorable or not.
    """

    key: str
    scores: FloatArray
    window: IntArray
    tp_unit: FloatArray
    fp_unit: FloatArray
    n_windows: int

    @property
    def scorable_windows(self) -> IntArray:
        return np.unique(self.window[self.window != OUTSIDE])


def prepare_file(
    key: str,
    anomaly_scores: npt.ArrayLike,
    windows: Sequence[tuple[int, int]],
    *,
    probationary_percent: float = PROBATIONARY_PERCENT,
) -> FileSweep:
    """Per-row NAB weights of one file, given inclusive window row-index pairs."""
    scores = np.asarray(anomaly_scores, dtype=np.float64).ravel()
    n = scores.shape[0]
    if n == 0:
        raise InputError(f"{key}: no rows to score")
    if not np.all(np.isfinite(scores)):
        raise InputError(f"{key}: anomaly scores contain NaN or infinite values")
    wins = sorted((int(a), int(b)) for a, b in windows)
    for j, (a, b) in enumerate(wins):
        if not 0 <= a <= b < n:
            raise InputError(f"{key}: window {j} ({a}, {b}) is not inside rows 0..{n - 1}")
        if j and a <= wins[j - 1][1]:
            raise InputError(f"{key}: windows {j - 1} and {j} overlap; merge them first")

    idx = np.arange(n)
    window = np.full(n, OUTSIDE, dtype=np.int64)
    tp_unit = np.zeros(n)
    fp_unit = np.full(n, -1.0)  # no preceding window: the full FP cost
    for j, (a, b) in enumerate(wins):
        width = b - a + 1
        inside = idx[a : b + 1]
        window[a : b + 1] = j
        tp_unit[a : b + 1] = scaled_sigmoid(-(b - inside + 1) / width) / _MAX_TP
        end = wins[j + 1][0] if j + 1 < len(wins) else n
        after = idx[b + 1 : end]
        fp_unit[b + 1 : end] = scaled_sigmoid((after - b) / max(width - 1, 1))
    fp_unit[window != OUTSIDE] = 0.0

    keep = idx >= probationary_length(n, probationary_percent)
    return FileSweep(
        key=key,
        scores=scores[keep],
        window=window[keep],
        tp_unit=tp_unit[keep],
        fp_unit=fp_unit[keep],
        n_windows=len(wins),
    )


def file_score(sweep_file: FileSweep, profile: CostProfile, threshold: float) -> float:
    """Raw NAB score of one file at ``threshold``, computed directly (no sweep)."""
    detected = sweep_file.scores >= threshold
    total = 0.0
    for w in sweep_file.scorable_windows:
        hits = detected & (sweep_file.window == w)
        total += float(sweep_file.tp_unit[hits].max()) * profile.tp if hits.any() else -profile.fn
    outside = detected & (sweep_file.window == OUTSIDE)
    return total + float(sweep_file.fp_unit[outside].sum()) * profile.fp


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepCurve:
    """Corpus score for every candidate threshold, highest threshold first.

    ``thresholds[0]`` is 1.1 (nothing detected); ``thresholds[k]`` for ``k >= 1`` is a distinct
    anomaly score and the row means "detections are scores >= thresholds[k]". Counts are
    rows (as NAB counts them): ``tp``/``fn`` in windows, ``fp``/``tn`` outside.
    """

    thresholds: FloatArray
    scores: FloatArray
    tp: IntArray
    fp: IntArray
    fn: IntArray
    tn: IntArray


def _gather(files: Iterable[FileSweep]) -> tuple[FloatArray, IntArray, FloatArray, FloatArray]:
    scores, window, tp_unit, fp_unit = [], [], [], []
    offset = 0
    for f in files:
        scores.append(f.scores)
        window.append(np.where(f.window == OUTSIDE, OUTSIDE, f.window + offset))
        tp_unit.append(f.tp_unit)
        fp_unit.append(f.fp_unit)
        offset += f.n_windows
    if not scores:
        raise InputError("no files to score")
    return (
        np.concatenate(scores),
        np.concatenate(window).astype(np.int64),
        np.concatenate(tp_unit),
        np.concatenate(fp_unit),
    )


def sweep(files: Sequence[FileSweep], profile: CostProfile) -> SweepCurve:
    """NAB's threshold sweep over all rows of all files together."""
    scores, window, tp_unit, fp_unit = _gather(files)
    order = np.argsort(-scores, kind="stable")
    s, w = scores[order], window[order]
    inside = w != OUTSIDE
    value = np.where(inside, tp_unit[order] * profile.tp, fp_unit[order] * profile.fp)

    # Each row's change of the corpus total when it becomes a detection: an FP adds its
    # (negative) value; an in-window row raises its window from -A_FN to the best value so far.
    delta = np.where(inside, 0.0, value)
    pos = np.flatnonzero(inside)
    by_window = pos[np.argsort(w[pos], kind="stable")]  # grouped by window, in sweep order
    bounds = np.flatnonzero(np.diff(w[by_window])) + 1
    for group in np.split(by_window, bounds):
        if group.size:
            best = np.maximum.accumulate(np.maximum(value[group], -profile.fn))
            delta[group] = np.diff(best, prepend=-profile.fn)

    n_windows = np.unique(w[inside]).size
    base = -profile.fn * n_windows
    total = base + np.cumsum(delta)
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(inside)[ends]
    fp = np.cumsum(~inside)[ends]
    n_in, n_out = int(inside.sum()), int((~inside).sum())
    return SweepCurve(
        thresholds=np.r_[1.1, s[ends]],
        scores=np.r_[base, total[ends]],
        tp=np.r_[0, tp].astype(np.int64),
        fp=np.r_[0, fp].astype(np.int64),
        fn=np.r_[n_in, n_in - tp].astype(np.int64),
        tn=np.r_[n_out, n_out - fp].astype(np.int64),
    )


def best_threshold(curve: SweepCurve) -> int:
    """Index of the best corpus score on the curve (first, i.e. highest threshold, on ties)."""
    return int(np.argmax(curve.scores))


def normalise(raw: float, *, null: float, perfect: float) -> float:
    """``100 (raw - null) / (perfect - null)``."""
    if perfect <= null:
        raise InputError("NAB normalisation needs a perfect score above the null score")
    return 100.0 * (raw - null) / (perfect - null)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileResult:
    """A detector's NAB result for one profile."""

    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    score: float
    tp: int
    fp: int
    fn: int
    tn: int
    per_file: dict[str, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class NabReport:
    """NAB results per profile name."""

    results: dict[str, ProfileResult]

    def scores(self) -> dict[str, float]:
        return {name: r.score for name, r in self.results.items()}


def score_corpus(
    files: Sequence[FileSweep],
    *,
    profiles: Iterable[CostProfile] = tuple(PROFILES.values()),
) -> NabReport:
    """Optimise the threshold corpus-wide per profile and normalise against null and perfect."""
    if not files:
        raise InputError("no files to score")
    null_files = [
        FileSweep(
            key=f.key,
            scores=np.full_like(f.scores, 0.5),
            window=f.window,
            tp_unit=f.tp_unit,
            fp_unit=f.fp_unit,
            n_windows=f.n_windows,
        )
        for f in files
    ]
    n_windows = sum(f.n_windows for f in files)
    results: dict[str, ProfileResult] = {}
    for profile in profiles:
        curve = sweep(files, profile)
        k = best_threshold(curve)
        null_curve = sweep(null_files, profile)
        null = float(null_curve.scores[best_threshold(null_curve)])
        perfect = profile.tp * n_windows
        raw = float(curve.scores[k])
        threshold = float(curve.thresholds[k])
        results[profile.name] = ProfileResult(
            profile=profile.name,
            threshold=threshold,
            raw=raw,
            null=null,
            perfect=perfect,
            score=normalise(raw, null=null, perfect=perfect) if n_windows else math.nan,
            tp=int(curve.tp[k]),
            fp=int(curve.fp[k]),
            fn=int(curve.fn[k]),
            tn=int(curve.tn[k]),
            per_file={f.key: file_score(f, profile, threshold) for f in files},
        )
    return NabReport(results=results)
