"""Family naming and defaults; the issue's acceptance figure on real M4 Hourly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mamlctl.timeseries.families import (
    calendar_period,
    detect_family,
    family_defaults,
    family_for,
    training_need,
)
from mamlctl.timeseries.readers import read_file

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_documented_defaults() -> None:
    hourly = family_for(24, 3600.0)
    assert (hourly.name, hourly.period, hourly.window, hourly.horizon, hourly.support) == (
        "hourly",
        24,
        96,
        48,
        120,
    )
    five = family_for(288, 300.0)
    assert (five.name, five.period, five.window, five.horizon, five.support) == (
        "5min",
        288,
        288,
        12,
        576,
    )
    weekly = family_for(52, 604800.0)
    assert (weekly.name, weekly.period, weekly.window, weekly.horizon, weekly.support) == (
        "weekly",
        None,
        52,
        13,
        65,
    )
    # K = L + P: partial support pairs (K - L origins) hold exactly P window origins
    for fam in (hourly, five):
        assert fam.period is not None
        assert fam.support - fam.window == fam.period
    assert weekly.support - weekly.window == weekly.horizon  # no cycle: H origins


def test_names_snap_and_fall_back() -> None:
    assert family_for(23, 3600.0).name == "hourly"  # within one lag of 24
    assert family_for(23, 3600.0).period == 24
    assert family_for(17, 3600.0).name == "hourly-p17"
    assert family_for(None, 3600.0).name == "hourly-nocycle"
    assert family_for(12, None).name == "p12"
    assert family_for(None, None).name == "nocycle"
    assert [calendar_period(s) for s in (300.0, 1800.0, 3600.0, 86400.0, 604800.0, 7.0)] == [
        288,
        48,
        24,
        7,
        None,
        None,
    ]
    assert family_defaults("x", period=None, interval_seconds=None).window == 32


def test_too_short_for_family_window_gets_none_and_the_note_says_the_need() -> None:
    t = np.arange(100)
    det = detect_family("s", np.sin(2 * np.pi * t[:95] / 24), interval_seconds=3600.0)
    assert det.family is None and "too short for hourly (95 < L = 96" in det.note
    assert "adapting needs K = 120" in det.note
    # one window is enough to be filed (and served zero-shot until it has K points)
    det = detect_family("s", np.sin(2 * np.pi * t / 24), interval_seconds=3600.0)
    assert det.family is not None and det.family.name == "hourly"


def test_an_odd_period_the_series_cannot_train_falls_back_to_the_calendar_family() -> None:
    """hourly-p116: L = 232, K = L + P = 348, H = 48: one series trains it from K + 1 + H = 397
    points (under the old K = L + H + P - 1 defaults it needed 558: the 507-point series)."""
    odd = family_for(116, 3600.0)
    assert (odd.window, odd.support, odd.horizon, training_need(odd)) == (232, 348, 48, 397)
    t = np.arange(507)
    saw = 10.0 + (t % 116) / 116.0 + 0.02 * np.random.default_rng(0).normal(size=507)
    det = detect_family("s507", saw, interval_seconds=3600.0)
    assert det.estimate.period == 116 and det.family is not None
    assert det.family.name == "hourly-p116"  # 507 >= 397: it can serve its own period
    det = detect_family("s350", saw[:350], interval_seconds=3600.0)
    assert det.estimate.period == 116  # detected, but 350 < 397 points
    assert det.family is not None and det.family.name == "hourly" and det.family.period == 24
    assert "hourly-p116 needs 397 points" in det.note and "350 here" in det.note


@pytest.mark.skipif(not (DATA / "m4" / "Hourly-train.csv.gz").exists(), reason="no M4 data")
def test_m4_hourly_at_least_95_percent_in_period_24_family() -> None:
    src = read_file(DATA / "m4" / "Hourly-train.csv.gz")
    dets = [
        detect_family(s.series_id, s.values, interval_seconds=src.interval_seconds)
        for s in src.series
    ]
    periods = Counter(d.family.period if d.family else None for d in dets)
    assert periods[24] / len(dets) >= 0.95  # measured: 406 / 414
