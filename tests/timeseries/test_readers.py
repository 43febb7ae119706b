"""Readers against hand-written files and the real data's published counts."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mamlctl.errors import IngestError, NotFoundError
from mamlctl.timeseries.readers import (
    detect_format,
    expand_paths,
    m4_interval_from_name,
    read_file,
    series_id_from_name,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
M4_HOURLY = DATA / "m4" / "Hourly-train.csv.gz"


def _write(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def test_m4_wide_gzip_drops_right_padding(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "Hourly-mini.csv.gz", '"V1","V2","V3","V4"\n"H1","1","2","3"\n"H2","4.5","",""\n'
    )
    src = read_file(f)
    assert src.format == "m4" and src.interval_seconds == 3600.0
    assert [s.series_id for s in src.series] == ["H1", "H2"]
    np.testing.assert_array_equal(src.series[0].values, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(src.series[1].values, [4.5])
    assert src.series[0].timestamps is None


def test_m4_internal_gap_stays_nan_and_text_is_an_error(tmp_path: Path) -> None:
    f = _write(tmp_path / "x.csv", '"V1","V2","V3","V4"\n"A","1","","3"\n')
    values = read_file(f, fmt="m4").series[0].values
    assert values[0] == 1.0 and np.isnan(values[1]) and values[2] == 3.0
    bad = _write(tmp_path / "y.csv", '"V1","V2","V3"\n"A","1","abc"\n')
    with pytest.raises(
        IngestError, match=r"y.csv: series A: non-numeric value 'abc' at line 2, column V3"
    ):
        read_file(bad, fmt="m4")


def test_nab_file_series_id_from_name(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "cpu_load.csv.gz",
        "timestamp,value\n2024-01-01 00:00:00,1.5\n2024-01-01 00:05:00,2\n",
    )
    src = read_file(f)
    (s,) = src.series
    assert (src.format, s.series_id) == ("nab", "cpu_load")
    np.testing.assert_array_equal(s.values, [1.5, 2.0])
    assert s.timestamps is not None
    assert list(s.timestamps.astype(str)) == [
        "2024-01-01T00:00:00.000000",
        "2024-01-01T00:05:00.000000",
    ]


def test_long_csv_groups_in_file_order_and_converts_timezones(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "long.csv",
        "series_id,timestamp,value\n"
        "a,2024-01-01T00:00:00+01:00,1\nb,2024-01-01T00:00:00Z,10\na,2024-01-01T01:00:00+01:00,2\n",
    )
    a, b = read_file(f).series
    assert (a.series_id, b.series_id) == ("a", "b")
    np.testing.assert_array_equal(a.values, [1.0, 2.0])
    assert a.timestamps is not None
    assert str(a.timestamps[0]) == "2023-12-31T23:00:00.000000"


def test_long_csv_errors_name_line(tmp_path: Path) -> None:
    f = _write(tmp_path / "long.csv", "series_id,timestamp,value\na,2024-01-01,1\nb,2024-01-01,x\n")
    with pytest.raises(IngestError, match=r"long.csv: series b: non-numeric value 'x' at line 3"):
        read_file(f)
    g = _write(tmp_path / "ts.csv", "series_id,timestamp,value\na,2024-01-01,1\na,notadate,2\n")
    with pytest.raises(IngestError, match=r"ts.csv: series a: bad timestamp 'notadate' at line 3"):
        read_file(g)


def test_long_parquet_without_timestamps(tmp_path: Path) -> None:
    f = tmp_path / "p.parquet"
    pd.DataFrame({"series_id": ["x", "x", "y"], "value": [1.0, 2.0, 3.0]}).to_parquet(f)
    x, y = read_file(f).series
    np.testing.assert_array_equal(x.values, [1.0, 2.0])
    assert x.timestamps is None and len(y) == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "file is empty"),
        ("a;b\n1;2\n", "cannot tell the format"),
        ('series_id,value\n"unterminated,1\n', "malformed CSV"),
        ("series_id,value\n", "file holds no rows"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, problem: str) -> None:
    f = _write(tmp_path / "bad.csv", text)
    with pytest.raises(IngestError, match=problem):
        read_file(f, fmt="auto" if text.startswith("a;") else "long")


def test_folder_expands_recursively_sorted(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    for p in ("b/z.csv", "a.csv.gz", "README.md", ".hidden.csv"):
        (tmp_path / p).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in expand_paths([tmp_path])] == [
        "a.csv.gz",
        "b/z.csv",
    ]
    with pytest.raises(NotFoundError, match="no such file"):
        expand_paths([tmp_path / "nope.csv"])


def test_names() -> None:
    assert series_id_from_name(Path("x/realKnownCause/nyc_taxi.csv.gz")) == "nyc_taxi"
    assert m4_interval_from_name(Path("Weekly-train.csv.gz")) == 604800.0
    assert m4_interval_from_name(Path("mydata.csv")) is None
    # the shipped demo files carry the frequency in the middle of the name
    assert m4_interval_from_name(Path("m4-Hourly-train-demo.csv.gz")) == 3600.0


@pytest.mark.skipif(not M4_HOURLY.exists(), reason="real M4 data not present")
def test_real_m4_hourly_counts_match_the_data_readme() -> None:
    assert detect_format(M4_HOURLY) == "m4"
    src = read_file(M4_HOURLY)
    lengths = [len(s) for s in src.series]
    assert (len(lengths), sum(lengths), min(lengths), max(lengths)) == (414, 353_500, 700, 960)


# --- strict parsing (regressions: each of these was silently mis-read or ran away) ----------


def test_extra_field_in_first_data_row_is_an_error_naming_the_line(tmp_path: Path) -> None:
    # Oracle: the header declares two fields; pandas' index inference used to store
    # series "1" with value 2 from the row "A,1,2".
    f = _write(tmp_path / "extra.csv", "series_id,value\nA,1,2\nA,3\n")
    with pytest.raises(IngestError, match=r"extra.csv: line 2 has 3 fields, the header has 2"):
        read_file(f)
    nab = _write(tmp_path / "n.csv", "timestamp,value\n2024-01-01,1,9\n2024-01-02,2\n")
    with pytest.raises(IngestError, match=r"n.csv: line 2 has 3 fields, the header has 2"):
        read_file(nab)


def test_extra_field_in_every_row_is_an_error(tmp_path: Path) -> None:
    f = _write(tmp_path / "extra.csv", "series_id,value\nA,1,2\nA,3,4\n")
    with pytest.raises(IngestError, match=r"line 2 has 3 fields"):
        read_file(f)


def test_overlong_line_fails_fast(tmp_path: Path) -> None:
    # Oracle: the 1 MiB line bound; one line of 10^7 fields used to take minutes and GBs.
    import time

    f = tmp_path / "wide.csv"
    with open(f, "w") as fh:
        fh.write("series_id,value\nA,1\nB,")
        fh.write("1," * 10_000_000)
        fh.write("1\n")
    started = time.perf_counter()
    with pytest.raises(IngestError, match=r"wide.csv: line 3 is longer than 1 MiB"):
        read_file(f)
    assert time.perf_counter() - started < 10
    gz = _write(tmp_path / "wide.csv.gz", "series_id,value\n" + "A," + "1" * (2 << 20) + "\n")
    with pytest.raises(IngestError, match=r"line 2 is longer than 1 MiB"):
        read_file(gz)


def test_nul_in_series_id_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "nul.csv"
    f.write_bytes(b"series_id,value\nA\x00B,1\nA,2\n")
    with pytest.raises(IngestError, match=r"NUL"):
        read_file(f)
    p = tmp_path / "nul.parquet"
    pd.DataFrame({"series_id": ["a\x00b", "a"], "value": [1.0, 2.0]}).to_parquet(p)
    with pytest.raises(IngestError, match=r"nul.parquet: series id .* NUL"):
        read_file(p)


def test_datetime_value_column_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "dt.parquet"
    pd.DataFrame(
        {"series_id": ["a", "a"], "value": pd.to_datetime(["2024-01-01", "2024-01-02"])}
    ).to_parquet(p)
    with pytest.raises(IngestError, match=r"dt.parquet: series a: values are datetimes"):
        read_file(p)


def test_parquet_bytes_ids_decode_as_utf8(tmp_path: Path) -> None:
    p = tmp_path / "b.parquet"
    pd.DataFrame({"series_id": [b"caf\xc3\xa9", b"x"], "value": [1.0, 2.0]}).to_parquet(p)
    assert [s.series_id for s in read_file(p).series] == ["café", "x"]
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"series_id": [b"\xff", b"x"], "value": [1.0, 2.0]}).to_parquet(bad)
    with pytest.raises(IngestError, match=r"bad.parquet: series id at row 1 is not UTF-8"):
        read_file(bad)
