"""Validation rules and NaN/order policies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mamlctl.domain import Series
from mamlctl.errors import IngestError
from mamlctl.timeseries.validation import validate_series


def _ts(*hours: int) -> np.ndarray:
    return np.array([np.datetime64("2024-01-01T00:00") + np.timedelta64(h, "h") for h in hours])


def test_clean_series_passes_unchanged() -> None:
    s = Series(series_id="a", values=np.array([1.0, 2.0]), timestamps=_ts(0, 1))
    out = validate_series(s, source="f.csv")
    np.testing.assert_array_equal(out.series.values, [1.0, 2.0])
    assert out.interpolated == 0 and out.unordered == 0


@pytest.mark.parametrize(
    ("values", "ts", "problem"),
    [
        ([1.0, np.inf], None, "f.csv: series a: infinite value at position 1"),
        (
            [1.0, np.nan, 3.0],
            None,
            "f.csv: series a: missing/NaN value at position 1 .*--nan interpolate",
        ),
        ([], None, "f.csv: series a: no values"),
        ([1.0, 2.0, 3.0], (0, 1, 1), "duplicate timestamp 2024-01-01T01:00:00 at position 2"),
        ([1.0, 2.0, 3.0], (0, 2, 1), "non-monotonic timestamps: 2024-01-01T01:00:00 at position 2"),
    ],
)
def test_rejections_name_file_series_problem(
    values: list[float], ts: tuple[int, ...] | None, problem: str
) -> None:
    s = Series(series_id="a", values=np.array(values), timestamps=None if ts is None else _ts(*ts))
    with pytest.raises(IngestError, match=problem):
        validate_series(s, source="f.csv")


def test_interpolate_fills_linearly_and_edges_take_nearest() -> None:
    s = Series(series_id="a", values=np.array([np.nan, 1.0, np.nan, np.nan, 4.0, np.nan]))
    out = validate_series(s, source="f", nan="interpolate")
    np.testing.assert_array_equal(out.series.values, [1.0, 1.0, 2.0, 3.0, 4.0, 4.0])
    assert out.interpolated == 4
    with pytest.raises(IngestError, match="every value is missing"):
        validate_series(
            Series(series_id="a", values=np.array([np.nan])), source="f", nan="interpolate"
        )


def test_file_order_keeps_repeats_and_counts_them() -> None:
    s = Series(series_id="a", values=np.arange(4.0), timestamps=_ts(0, 1, 1, 0))
    out = validate_series(s, source="f", order="file")
    assert out.unordered == 2
    np.testing.assert_array_equal(out.series.values, np.arange(4.0))


@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=50)
)
def test_finite_values_round_trip_exactly(values: list[float]) -> None:
    out = validate_series(Series(series_id="x", values=np.array(values)), source="f")
    np.testing.assert_array_equal(out.series.values, np.array(values))
