"""The NAB scorer on small synthetic files with known windows, computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.errors import InputError
from mamlctl.evaluation.nab_scoring import (
    PROFILES,
    CostProfile,
    FileSweep,
    file_score,
    prepare_file,
    scaled_sigmoid,
    score_corpus,
    sweep,
)

STANDARD = PROFILES["standard"]


def sig(x: float) -> float:
    """NAB's scaled sigmoid, written from its definition."""
    return -1.0 if x > 3.0 else 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def detections(n: int, rows: list[int]) -> np.ndarray:
    out = np.zeros(n)
    out[rows] = 1.0
    return out


def one_file(rows: list[int], *, n: int = 100, windows: tuple[tuple[int, int], ...] = ((40, 49),)):
    return prepare_file("f.csv", detections(n, rows), windows, probationary_percent=0.0)


def test_profiles_are_nabs_published_weights() -> None:
    weights = {name: (p.tp, p.fp, p.fn, p.tn) for name, p in PROFILES.items()}
    assert weights == {
        "standard": (1.0, 0.11, 1.0, 1.0),
        "reward_low_FP_rate": (1.0, 0.22, 1.0, 1.0),
        "reward_low_FN_rate": (1.0, 0.11, 2.0, 1.0),
    }


def test_scaled_sigmoid_published_values() -> None:
    got = scaled_sigmoid([-1.0, -0.5, 0.0, 1.0, 3.0, 3.5])
    want = [0.98661, 0.84828, 0.0, -0.98661, sig(3.0), -1.0]
    assert got == pytest.approx(want, abs=1e-5)


def test_detection_at_window_start_beats_one_at_its_end() -> None:
    start = file_score(one_file([40]), STANDARD, 0.5)
    end = file_score(one_file([49]), STANDARD, 0.5)
    assert start == pytest.approx(1.0)  # exactly A_TP at the first row
    assert end == pytest.approx(sig(-1 / 10) / sig(-1.0))  # -(49 - 49 + 1) / 10
    assert start > end > 0


def test_only_first_detection_in_a_window_counts() -> None:
    assert file_score(one_file([40, 45, 49]), STANDARD, 0.5) == pytest.approx(1.0)
    assert file_score(one_file([45, 49]), STANDARD, 0.5) == pytest.approx(sig(-5 / 10) / sig(-1.0))


def test_false_positives_weighted_by_distance_to_previous_window() -> None:
    # Row 10: no window precedes it -> -A_FP. Row 55: 6 rows after a window of width 10.
    # Rows 95 and 99: far enough (> 3 widths) to cost the full -A_FP... 95 is (95-49)/9 > 3.
    got = file_score(one_file([10, 55, 95]), STANDARD, 0.5)
    want = -0.11 + 0.11 * sig(6 / 9) - 0.11 - 1.0  # plus the missed window
    assert got == pytest.approx(want)
    assert sig(6 / 9) > -1.0


def test_missed_window_costs_fn_weight_per_profile() -> None:
    f = one_file([])
    assert file_score(f, STANDARD, 0.5) == -1.0
    assert file_score(f, PROFILES["reward_low_FN_rate"], 0.5) == -2.0


def test_probationary_rows_are_not_scored() -> None:
    # n = 100 -> 15 probationary rows; a detection at row 5 is ignored entirely.
    f = prepare_file("p.csv", detections(100, [5, 40]), ((40, 49),))
    assert f.scores.shape == (85,)
    assert file_score(f, STANDARD, 0.5) == pytest.approx(1.0)


def corpus(dets: list[list[int]]) -> list[FileSweep]:
    windows = [((40, 49),), ((20, 29), (70, 79)), ()]
    return [
        prepare_file(f"c/{i}.csv", detections(100, d), w, probationary_percent=0.0)
        for i, (d, w) in enumerate(zip(dets, windows, strict=True))
    ]


def test_null_detector_scores_zero_and_perfect_detector_scores_hundred() -> None:
    null = score_corpus(corpus([[], [], []])).scores()
    perfect = score_corpus(corpus([[40], [20, 70], []])).scores()
    assert null == {name: pytest.approx(0.0) for name in PROFILES}
    assert perfect == {name: pytest.approx(100.0) for name in PROFILES}
    constant = [
        FileSweep(
            key=f.key,
            scores=np.full_like(f.scores, 0.3),
            window=f.window,
            tp_unit=f.tp_unit,
            fp_unit=f.fp_unit,
            n_windows=f.n_windows,
        )
        for f in corpus([[], [], []])
    ]
    assert score_corpus(constant).scores() == {name: pytest.approx(0.0) for name in PROFILES}


def test_profile_differences_hand_computed() -> None:
    # Catch window 1 at its start, miss windows 2 and 3, one FP before any window (row 5).
    report = score_corpus(corpus([[40], [5], []]))
    fp_file2 = -1.0  # row 5 of file 2 precedes its first window
    raw_std = 1.0 + 0.11 * fp_file2 - 2 * 1.0
    raw_fp = 1.0 + 0.22 * fp_file2 - 2 * 1.0
    raw_fn = 1.0 + 0.11 * fp_file2 - 2 * 2.0
    want = {
        "standard": 100 * (raw_std + 3) / (3 + 3),
        "reward_low_FP_rate": 100 * (raw_fp + 3) / (3 + 3),
        "reward_low_FN_rate": 100 * (raw_fn + 6) / (3 + 6),
    }
    assert report.scores() == pytest.approx(want)
    std = report.results["standard"]
    assert (std.raw, std.null, std.perfect, std.threshold) == pytest.approx(
        (raw_std, -3.0, 3.0, 1.0)
    )
    assert (std.tp, std.fp, std.fn, std.tn) == (1, 1, 29, 269)  # rows, as NAB counts
    assert sum(std.per_file.values()) == pytest.approx(std.raw)
    assert report.scores()["reward_low_FP_rate"] < report.scores()["standard"]


def test_threshold_is_optimised_over_the_whole_corpus() -> None:
    # File A: a TP at 0.9 and a far FP (-A_FP) at 0.8. File B: a TP (window start) at 0.7.
    # Per-file thresholds would give 1 + 1 = 2; NAB's one corpus threshold (0.7) gives 1.89.
    a = np.zeros(100)
    a[40], a[95] = 0.9, 0.8
    b = np.zeros(100)
    b[20] = 0.7
    files = [
        prepare_file("a.csv", a, ((40, 49),), probationary_percent=0.0),
        prepare_file("b.csv", b, ((20, 29),), probationary_percent=0.0),
    ]
    curve = sweep(files, STANDARD)
    assert curve.thresholds.tolist() == pytest.approx([1.1, 0.9, 0.8, 0.7, 0.0])
    assert curve.scores[:4] == pytest.approx([-2.0, 0.0, -0.11, 1.89])
    assert curve.fp.tolist()[:4] == [0, 0, 1, 1]
    assert curve.tp.tolist()[:4] == [0, 1, 1, 2]
    result = score_corpus(files, profiles=[STANDARD]).results["standard"]
    assert result.threshold == pytest.approx(0.7)
    assert result.raw == pytest.approx(1.89)
    assert result.per_file == pytest.approx({"a.csv": 0.89, "b.csv": 1.0})


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_sweep_equals_direct_scoring_at_every_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    files = [
        prepare_file(
            f"r{i}.csv",
            np.round(rng.random(60), 1),
            ((10, 17), (30, 33)) if i else ((45, 59),),
        )
        for i in range(3)
    ]
    profile = CostProfile("odd", tp=1.3, fp=0.4, fn=0.7)
    curve = sweep(files, profile)
    for t, s in zip(curve.thresholds, curve.scores, strict=True):
        assert s == pytest.approx(sum(file_score(f, profile, t) for f in files), abs=1e-9)


def test_prepare_file_rejects_bad_windows() -> None:
    with pytest.raises(InputError, match="overlap"):
        prepare_file("x.csv", np.zeros(50), ((10, 20), (20, 30)))
    with pytest.raises(InputError, match="inside rows"):
        prepare_file("x.csv", np.zeros(50), ((45, 55),))
    with pytest.raises(InputError, match="NaN"):
        prepare_file("x.csv", np.array([0.1, np.nan]), ())
