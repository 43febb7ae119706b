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
        167,
    )
    five = family_for(288, 300.0)
    assert (five.name, five.period, five.window, five.horizon, five.support) == (
        "5min",
        288,
        288,
        12,
        587,
    )
    weekly = family_for(52, 604800.0)
    assert (weekly.name, weekly.period, weekly.window, weekly.horizon, weekly.support) == (
        "weekly",
        None,
        52,
        13,
        77,
    )
    # K holds exactly P window origins
    for fam in (hourly, five):
        assert fam.period is not None
        assert fam.support - fam.window - fam.horizon + 1 == fam.period


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


def test_too_short_for_family_gets_none() -> None:
    t = np.arange(100)
    det = detect_family("s", np.sin(2 * np.pi * t / 24), interval_seconds=3600.0)
    assert det.family is None and "too short for hourly" in det.note


@pytest.mark.skipif(not (DATA / "m4" / "Hourly-train.csv.gz").exists(), reason="no M4 data")
def test_m4_hourly_at_least_95_percent_in_period_24_family() -> None:
    src = read_file(DATA / "m4" / "Hourly-train.csv.gz")
    dets = [
        detect_family(s.series_id, s.values, interval_seconds=src.interval_seconds)
        for s in src.series
    ]
    periods = Counter(d.family.period if d.family else None for d in dets)
    assert periods[24] / len(dets) >= 0.95  # measured: 406 / 414
