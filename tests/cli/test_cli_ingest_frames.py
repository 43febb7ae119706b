"""``mamlctl ingest`` of the ecosystem's frames: Nixtla ``unique_id,ds,y`` and Prophet ``ds,y``
in CSV and Parquet, from stdin, with explicit column names. Oracle: the input frame itself;
the registry holds exactly its values and timestamps, in its order."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.registry.db import transaction
from mamlctl.registry.tables import PointRow, SeriesRow
from mamlctl.settings import Settings

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def stored(settings: Settings) -> dict[str, list[tuple[datetime | None, float]]]:
    out: dict[str, list[tuple[datetime | None, float]]] = {}
    with transaction(settings) as s:
        rows = s.execute(
            select(SeriesRow.series_id, PointRow.ts, PointRow.value)
            .join(PointRow, PointRow.series_pk == SeriesRow.id)
            .order_by(SeriesRow.series_id, PointRow.position)
        )
        for sid, ts, value in rows:
            out.setdefault(sid, []).append((ts, value))
    return out


def expected(
    df: pd.DataFrame, *, id_col: str | None, time_col: str, value_col: str, sid: str = ""
) -> dict[str, list[tuple[datetime | None, float]]]:
    out: dict[str, list[tuple[datetime | None, float]]] = {}
    for _, row in df.iterrows():
        key = str(row[id_col]) if id_col else sid
        out.setdefault(key, []).append(
            (pd.Timestamp(row[time_col]).to_pydatetime(), float(row[value_col]))
        )
    return out


def nixtla_frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    parts = []
    for sid, start in (("a", "2024-03-01 00:00"), ("b", "2024-05-02 06:00")):
        ds = pd.date_range(start, periods=30, freq="h")
        parts.append(pd.DataFrame({"unique_id": sid, "ds": ds, "y": rng.normal(10, 3, 30)}))
    return pd.concat(parts, ignore_index=True)


@sqlite_only
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_nixtla_frame_is_stored_exactly(db_settings: Settings, tmp_path: Path, suffix: str) -> None:
    df = nixtla_frame()
    path = tmp_path / f"frame{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    code, out, err = run("ingest", str(path), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["files_detail"][0]["format"] == "nixtla"
    assert (report["series_new"], report["points_added"]) == (2, 60)
    assert stored(db_settings) == expected(df, id_col="unique_id", time_col="ds", value_col="y")
    code, out, err = run("series", "show", "a", "--json")
    assert code == 0, err
    assert json.loads(out)["series"]["interval_seconds"] == 3600.0


@sqlite_only
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_prophet_frame_takes_its_id_from_the_file_name(
    db_settings: Settings, tmp_path: Path, suffix: str
) -> None:
    df = nixtla_frame().query("unique_id == 'b'")[["ds", "y"]]
    path = tmp_path / f"shop_sales{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    code, out, err = run("ingest", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["files_detail"][0]["format"] == "prophet"
    assert stored(db_settings) == expected(
        df, id_col=None, time_col="ds", value_col="y", sid="shop_sales"
    )


@sqlite_only
def test_prophet_series_id_flag(db_settings: Settings, tmp_path: Path) -> None:
    df = nixtla_frame().query("unique_id == 'a'")[["ds", "y"]]
    path = tmp_path / "x.csv"
    df.to_csv(path, index=False)
    code, _, err = run("ingest", str(path), "--series-id", "store-7")
    assert code == 0, err
    assert list(stored(db_settings)) == ["store-7"]


@sqlite_only
def test_stdin_csv_is_stored_exactly(db_settings: Settings) -> None:
    df = nixtla_frame()
    code, out, err = run("ingest", "-", "--json", input=df.to_csv(index=False))
    assert code == 0, err
    assert json.loads(out)["points_added"] == 60
    assert stored(db_settings) == expected(df, id_col="unique_id", time_col="ds", value_col="y")


@sqlite_only
def test_stdin_prophet_with_series_id(db_settings: Settings) -> None:
    df = nixtla_frame().query("unique_id == 'a'")[["ds", "y"]]
    code, _, err = run("ingest", "-", "--series-id", "piped", input=df.to_csv(index=False))
    assert code == 0, err
    assert stored(db_settings) == expected(
        df, id_col=None, time_col="ds", value_col="y", sid="piped"
    )


@sqlite_only
def test_column_flags_override_detection(db_settings: Settings, tmp_path: Path) -> None:
    df = nixtla_frame().rename(columns={"unique_id": "store", "ds": "when", "y": "sales"})
    df["y"] = 0.0  # a decoy a detector would take for the value column
    path = tmp_path / "custom.csv"
    df.to_csv(path, index=False)
    code, _, err = run(
        "ingest", str(path), "--id-col", "store", "--time-col", "when", "--value-col", "sales"
    )
    assert code == 0, err
    assert stored(db_settings) == expected(df, id_col="store", time_col="when", value_col="sales")


@sqlite_only
def test_unknown_column_flag_is_one_line(db_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    nixtla_frame().to_csv(path, index=False)
    code, _, err = run("ingest", str(path), "--value-col", "sales")
    assert code == 1
    assert err.count("\n") == 1 and "no column 'sales'" in err


@sqlite_only
def test_strictness_is_kept_for_the_new_frames(db_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("unique_id,ds,y\na,2024-01-01 00:00,1,99\n")
    code, _, err = run("ingest", str(path))
    assert code == 1 and "line 2" in err
    path.write_text("unique_id,ds,y\na\x00b,2024-01-01 00:00,1\n")
    code, _, err = run("ingest", str(path))
    assert code == 1 and "NUL" in err
    assert stored(db_settings) == {}
