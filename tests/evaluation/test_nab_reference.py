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

from pathlib import Path

import numpy as np
import pytest

from mamlctl.evaluation.nab import load_corpus, windowed_gaussian
from mamlctl.evaluation.nab_scoring import prepare_file, score_corpus

REAL = Path("/work/shared/data/nab")
PUBLISHED = {
    "standard": 39.649523496077585,
    "reward_low_FP_rate": 20.86798582474138,
    "reward_low_FN_rate": 47.4100271583046,
}
_round12 = np.frompyfunc(lambda v: float(f"{v:.12g}"), 1, 1)


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason="NAB corpus not present")
def test_windowed_gaussian_matches_nab_published_scores() -> None:
    corpus = load_corpus(REAL)
    raw = [windowed_gaussian(s, 0) for s in corpus]
    rounded = [np.asarray(_round12(r), dtype=np.float64) for r in raw]
    report = score_corpus(
        [prepare_file(s.key, r, s.windows) for s, r in zip(corpus, rounded, strict=True)]
    )
    assert report.scores() == pytest.approx(PUBLISHED, abs=1e-6)
    assert {r.threshold for r in report.results.values()} == {1.0}
    # Unrounded, the same detector scores a little higher (the 1.0 plateau shrinks).
    unrounded = score_corpus(
        [prepare_file(s.key, r, s.windows) for s, r in zip(corpus, raw, strict=True)]
    )
    assert unrounded.scores()["standard"] == pytest.approx(40.1349, abs=1e-4)
