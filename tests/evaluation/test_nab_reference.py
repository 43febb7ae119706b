"""The scorer reproduces NAB's published final scores of a published detector.

NAB's ``results/final_results.json`` lists windowedGaussian at standard 39.649523496077585,
reward_low_FP_rate 20.86798582474138 and reward_low_FN_rate 47.4100271583046. The detector is
simple enough to re-run here from its published definition: a Gaussian over a window of past
values (growing to 6400 values, then sliding in steps of 100), anomaly score ``1 - Q(|z|)``.
NAB stored its results through Python 2, whose ``str(float)`` keeps 12 significant digits, so
the scores are rounded the same way before scoring (that rounding decides which scores are
exactly 1.0, NAB's optimal threshold here).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from mamlctl.evaluation import nab_data
from mamlctl.evaluation.nab_scoring import prepare_file, score_corpus

REAL = Path("/work/shared/data/nab")
PUBLISHED = {
    "standard": 39.649523496077585,
    "reward_low_FP_rate": 20.86798582474138,
    "reward_low_FN_rate": 47.4100271583046,
}
_erfc = np.frompyfunc(math.erfc, 1, 1)
_round12 = np.frompyfunc(lambda v: float(f"{v:.12g}"), 1, 1)


def windowed_gaussian(values: np.ndarray, *, size: int = 6400, step: int = 100) -> np.ndarray:
    """Score row i against mean/std of the window as it stood before row i was seen."""
    n = values.shape[0]
    mean = np.zeros(n)
    std = np.ones(n)
    # The window grows one value per row up to `size`, then refreshes every `step` rows.
    refresh = list(range(1, min(size, n) + 1)) + list(range(size + step, n + 1, step))
    bounds = [*refresh, n + 1]
    for k, end in enumerate(refresh):
        window = values[max(0, end - size) : end]
        m, s = float(np.mean(window)), float(np.std(window))
        mean[end : bounds[k + 1]] = m
        std[end : bounds[k + 1]] = s if s != 0.0 else 1e-6
    mirrored = np.where(values < mean, 2 * mean - values, values)
    z = (mirrored - mean) / std
    scores = 1 - 0.5 * _erfc(z / math.sqrt(2)).astype(np.float64)
    scores[0] = 0.0
    return np.asarray(_round12(scores), dtype=np.float64)


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason="NAB corpus not present")
def test_windowed_gaussian_matches_nab_published_scores() -> None:
    windows = nab_data.load_windows(REAL)
    files = []
    for f in nab_data.list_files(REAL):
        series = nab_data.read_file(f, windows[f.key])
        files.append(prepare_file(f.key, windowed_gaussian(series.values), series.windows))
    report = score_corpus(files)
    assert report.scores() == pytest.approx(PUBLISHED, abs=1e-6)
    assert {r.threshold for r in report.results.values()} == {1.0}
