"""Small conventions: model files are 0644 whatever the umask, ``--json`` times are ISO 8601
wall-clock strings, and ``models list`` is readable at 80 columns."""

from __future__ import annotations

import io
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.registry import model_files as mf


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_model_files_are_0644_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        stored = mf.write_model_file(tmp_path, family="hourly", series_id="H1", data=b"x" * 10)
    finally:
        os.umask(old)
    assert mode(tmp_path / stored.relpath) == 0o644


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_adapted_and_exported_files_are_0644(adapted_home: Any, tmp_path: Path) -> None:
    files = [p for p in adapted_home.settings.models_dir.rglob("*.onnx")]
    assert files and {mode(p) for p in files} == {0o644}
    out = tmp_path / "t0.onnx"
    result = CliRunner().invoke(app, ["export", "--series", "t0", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert mode(out) == 0o644


def test_watch_json_events_carry_wall_clock_iso_times() -> None:
    from mamlctl.cli.watch import event_json

    now = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    doc = event_json({"kind": "promoted", "at": 12345.678}, now)
    assert doc["at"] == "2026-05-01T12:30:00+00:00"
    assert datetime.fromisoformat(str(event_json({"at": 1.0})["at"])).tzinfo is not None


def test_models_list_is_readable_at_80_columns() -> None:
    from mamlctl.cli.models import versions_table

    rows = [
        {
            "family": fam,
            "registered_model": f"maml-{fam}",
            "version": v,
            "aliases": aliases,
            "created_at": datetime(2026, 5, 1, 12, 30, tzinfo=UTC),
            "run_status": "FINISHED",
            "metrics": {"val_mase": 0.8123, "val_seasonal_naive_mase": 1.0012, "val_pre": 0.9},
        }
        for fam, v, aliases in (
            ("hourly", 12, ["champion"]),
            ("5min-p288", 3, ["challenger"]),
            ("weekly-nocycle", 104, []),
        )
    ]
    buf = io.StringIO()
    Console(file=buf, width=80, color_system=None).print(versions_table(rows, title="x"))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert all(ln.rstrip()[-1] in "┓┃┩│┘" for ln in text.splitlines()[1:])  # nothing cropped
    assert "…" not in text
    for r in rows:
        line = next(ln for ln in text.splitlines() if r["registered_model"] in ln)
        cells = [c.strip() for c in line.split("│")]
        assert cells[1:5] == [
            r["family"],
            r["registered_model"],
            str(r["version"]),
            ",".join(r["aliases"]),
        ]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_forecast_json_ds_is_iso(adapted_home: Any) -> None:
    result = CliRunner().invoke(app, ["detect", "--series", "t0", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert all(datetime.fromisoformat(r["ds"]).isoformat() == r["ds"] for r in rows)
