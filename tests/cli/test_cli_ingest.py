"""``mamlctl ingest`` through the CLI runner on both backends: counts, idempotence, and bad
input that leaves the database exactly as it was (counts and contents)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.registry.db import transaction
from mamlctl.registry.tables import PointRow, SeriesRow
from mamlctl.settings import Settings

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def dump(settings: Settings) -> list[tuple[object, ...]]:
    with transaction(settings) as s:
        return [
            tuple(r)
            for r in s.execute(
                select(
                    SeriesRow.series_id,
                    SeriesRow.n_points,
                    PointRow.position,
                    PointRow.ts,
                    PointRow.value,
                )
                .join(PointRow, PointRow.series_pk == SeriesRow.id)
                .order_by(SeriesRow.series_id, PointRow.position)
            )
        ]


def m4_file(path: Path, rows: dict[str, list[float]]) -> Path:
    width = max(len(v) for v in rows.values()) + 1
    lines = [",".join(f'"V{i + 1}"' for i in range(width))]
    for sid, vals in rows.items():
        cells = [f'"{sid}"'] + [f'"{v}"' for v in vals] + ['""'] * (width - 1 - len(vals))
        lines.append(",".join(cells))
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_ingest_m4_idempotent_then_append(db_settings: Settings, tmp_path: Path) -> None:
    f = m4_file(tmp_path / "Hourly-mini.csv.gz", {"H1": [1.0, 2.0, 3.0], "H2": [5.0, 6.0]})
    code, out, err = run("ingest", str(f), "--format", "m4", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["series_new"], summary["points_added"], summary["nan_policy"]) == (
        2,
        5,
        "reject",
    )
    first = dump(db_settings)
    code, out, _ = run("ingest", str(f), "--format", "m4", "--json")
    assert (code, json.loads(out)["series_unchanged"], json.loads(out)["points_added"]) == (0, 2, 0)
    assert dump(db_settings) == first
    g = m4_file(tmp_path / "Hourly-mini.csv.gz", {"H1": [1.0, 2.0, 3.0, 4.0], "H2": [5.0, 6.0]})
    code, out, _ = run("ingest", str(g), "--json")
    assert (code, json.loads(out)["series_appended"], json.loads(out)["points_added"]) == (0, 1, 1)
    assert dump(db_settings)[:3] == [
        ("H1", 4, 0, None, 1.0),
        ("H1", 4, 1, None, 2.0),
        ("H1", 4, 2, None, 3.0),
    ]
    code, out, _ = run("series", "show", "H1", "--json")
    shown = json.loads(out)["series"]
    assert (shown["n_points"], shown["interval_seconds"]) == (4, 3600.0)  # from the M4 file name


BAD_INPUTS = {
    "malformed": ('series_id,timestamp,value\n"a,2024-01-01,1\n', "malformed CSV"),
    "non_numeric": (
        "series_id,timestamp,value\na,2024-01-01,abc\n",
        "series a: non-numeric value 'abc' at line 2",
    ),
    "infinite": (
        "series_id,timestamp,value\na,2024-01-01,1\na,2024-01-02,inf\n",
        "series a: infinite value at position 1",
    ),
    "nan": (
        "series_id,timestamp,value\na,2024-01-01,1\na,2024-01-02,\n",
        "series a: missing/NaN value at position 1",
    ),
    "duplicate_ts": (
        "series_id,timestamp,value\na,2024-01-01,1\na,2024-01-01,2\n",
        "series a: duplicate timestamp",
    ),
    "backwards_ts": (
        "series_id,timestamp,value\na,2024-01-02,1\na,2024-01-01,2\n",
        "series a: non-monotonic timestamps",
    ),
    "changed_history": (
        "series_id,timestamp,value\nok,2024-01-01,1\nok,2024-01-02,7\n",
        "series ok: value at position 1 is 7.0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_changes_nothing(
    db_settings: Settings, tmp_path: Path, case: str
) -> None:
    good = tmp_path / "good.csv"
    good.write_text("series_id,timestamp,value\nok,2024-01-01,1\nok,2024-01-02,2\n")
    assert run("ingest", str(good))[0] == 0
    before = dump(db_settings)
    text, problem = BAD_INPUTS[case]
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    # a valid new series first: a batch whose later file is bad stores nothing at all
    other = tmp_path / "other.csv"
    other.write_text("series_id,timestamp,value\nfresh,2024-01-01,1\n")
    code, out, err = run("ingest", str(other), str(bad))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err + out
    assert str(bad) in err and problem in err
    assert dump(db_settings) == before


def test_nan_interpolate_is_said_in_output(db_settings: Settings, tmp_path: Path) -> None:
    f = tmp_path / "gap.csv"
    f.write_text("series_id,timestamp,value\na,2024-01-01,1\na,2024-01-02,\na,2024-01-03,3\n")
    code, out, err = run("ingest", str(f), "--nan", "interpolate")
    assert code == 0, err
    assert "NaN policy: interpolate (1 values interpolated)" in out
    assert [r[-1] for r in dump(db_settings)] == [1.0, 2.0, 3.0]


def test_unknown_options_and_paths_are_one_line_errors(
    tmp_settings: Settings, tmp_path: Path
) -> None:
    for args, problem in (
        (["ingest", str(tmp_path / "nope.csv")], "no such file or folder"),
        (["ingest", str(tmp_path), "--nan", "zero"], "unknown --nan 'zero'"),
        (["ingest", str(tmp_path), "--interval", "fortnight"], "invalid interval"),
    ):
        code, _, err = run(*args)
        assert code == 1 and problem in err and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "m4").exists(), reason="real data not present")
def test_real_m4_hourly_and_nab_folder(sqlite_url: str, tmp_settings: Settings) -> None:
    code, out, err = run(
        "ingest", str(DATA / "m4" / "Hourly-train.csv.gz"), "--format", "m4", "--json"
    )
    assert code == 0, err
    assert (json.loads(out)["series"], json.loads(out)["points_added"]) == (414, 353_500)
    code, out, err = run("ingest", str(DATA / "nab" / "data"), "--order", "file", "--json")
    assert code == 0, err
    assert (json.loads(out)["files"], json.loads(out)["points_added"]) == (58, 365_558)
    code, out, _ = run("status", "--json")
    rows = json.loads(out)["families"]
    assert sum(r["series"] for r in rows) == 414 + 58
    assert sum(r["points"] for r in rows) == 353_500 + 365_558


def test_extra_field_in_first_row_is_one_line_exit_1(
    tmp_settings: Settings, tmp_path: Path
) -> None:
    # Oracle: the header has two fields; this row used to be stored as series "1" = 2.
    f = tmp_path / "extra.csv"
    f.write_text("series_id,value\nA,1,2\nA,3\n")
    code, _, err = run("ingest", str(f))
    assert code == 1
    assert err.count("\n") == 1 and "extra.csv: line 2 has 3 fields, the header has 2" in err
    assert not tmp_settings.database_path.exists() or dump(tmp_settings) == []
