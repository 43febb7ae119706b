"""``mamlctl families`` and ``series``/``status``/``db`` through the CLI runner."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.registry import queries as q
from mamlctl.registry.db import transaction
from mamlctl.settings import Settings


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def long_csv(path: Path, n: int = 480) -> Path:
    """Hourly series: two daily sines, one white noise, one short sine."""
    rng = np.random.default_rng(7)
    ts = np.datetime64("2024-01-01T00:00") + np.arange(n) * np.timedelta64(1, "h")
    t = np.arange(n)
    series = {
        "sine_a": 10 + np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(n),
        "sine_b": 5 + 2 * np.cos(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(n),
        "noise": rng.standard_normal(n),
        "short": (10 + np.sin(2 * np.pi * t / 24))[:95],  # < L = 96: no family
    }
    lines = ["series_id,timestamp,value"]
    for sid, vals in series.items():
        lines += [f"{sid},{ts[i]},{v!r}" for i, v in enumerate(vals.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_detect_list_show_assign(db_settings: Settings, tmp_path: Path) -> None:
    assert run("ingest", str(long_csv(tmp_path / "h.csv")))[0] == 0
    code, out, err = run("families", "detect", "--json")
    assert code == 0, err
    det = {d["series_id"]: d for d in json.loads(out)["detections"]}
    assert (det["sine_a"]["period"], det["sine_a"]["family"]) == (24, "hourly")
    assert (det["sine_b"]["family"], det["noise"]["family"]) == ("hourly", "hourly-nocycle")
    assert det["noise"]["period"] is None
    assert det["short"]["family"] is None and "too short for hourly" in det["short"]["note"]
    code, out, _ = run("families", "list", "--json")
    fams = {f["name"]: f for f in json.loads(out)}
    assert (fams["hourly"]["period"], fams["hourly"]["window"], fams["hourly"]["series"]) == (
        24,
        96,
        2,
    )
    code, out, _ = run("families", "show", "hourly", "--json")
    assert json.loads(out)["series"] == ["sine_a", "sine_b"]
    # explicit assignment survives re-detection
    assert run("families", "assign", "hourly-nocycle", "sine_a")[0] == 0
    assert run("families", "detect")[0] == 0
    code, out, _ = run("series", "show", "sine_a", "--json")
    assert (json.loads(out)["series"]["family"], json.loads(out)["series"]["family_origin"]) == (
        "hourly-nocycle",
        "assigned",
    )


def test_assign_errors_leave_families_unchanged(db_settings: Settings, tmp_path: Path) -> None:
    assert run("ingest", str(long_csv(tmp_path / "h.csv")))[0] == 0
    assert run("families", "detect")[0] == 0
    before = run("series", "list", "--json")[1]
    code, _, err = run("families", "assign", "nosuch", "sine_a")
    assert code == 1 and "unknown family 'nosuch'" in err
    code, _, err = run("families", "assign", "hourly", "sine_a", "short")
    assert (
        code == 1 and "series short has 95 points, fewer than family hourly's window L = 96" in err
    )
    code, _, err = run("families", "assign", "hourly", "ghost")
    assert code == 1 and "unknown series 'ghost'" in err
    assert run("series", "list", "--json")[1] == before


def test_create_family_then_assign_short_series(db_settings: Settings, tmp_path: Path) -> None:
    assert run("ingest", str(long_csv(tmp_path / "h.csv")))[0] == 0
    code, out, err = run(
        "families",
        "create",
        "tiny",
        "-L",
        "24",
        "-H",
        "6",
        "-P",
        "24",
        "--interval",
        "1h",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["support"] == 24 + 24
    assert run("families", "assign", "tiny", "short")[0] == 0
    code, _, err = run("families", "create", "bad", "-L", "24", "-H", "6", "-K", "5")
    assert code == 1 and "support K=5 counts the window, so it must be >= window + 1 = 25" in err


def test_status_and_lineage(db_settings: Settings, tmp_path: Path) -> None:
    assert run("ingest", str(long_csv(tmp_path / "h.csv")))[0] == 0
    assert run("families", "detect")[0] == 0
    with transaction(db_settings) as s:
        q.record_initializer_version(s, family="hourly", version=1, run_id="run1")
        q.record_adapted_model(
            s,
            series_id="sine_a",
            registered_model="maml-hourly",
            initializer_version=1,
            path="models/a.onnx",
            sha256="0" * 64,
            support=167,
            window=96,
            horizon=48,
            residual_scale=0.1,
            threshold=0.9,
        )
        q.record_initializer_version(s, family="hourly", version=2, run_id="run2")
    code, out, err = run("status", "--json")
    assert code == 0, err
    rows = {r["family"]: r for r in json.loads(out)["families"]}
    assert (rows["hourly"]["series"], rows["hourly"]["points"]) == (2, 960)
    assert (rows["hourly"]["initializer_versions"], rows["hourly"]["serving_version"]) == (2, 2)
    assert (rows["hourly"]["adapted"], rows["hourly"]["stale"]) == (1, 1)
    assert rows[None]["series"] == 1  # "short" has no family
    code, out, _ = run("series", "show", "sine_a", "--json")
    shown = json.loads(out)
    assert shown["current_adapted_model"]["initializer_run_id"] == "run1"
    assert shown["initializer_version"]["version"] == 1
    code, out, _ = run("series", "show", "sine_a")
    assert "initializer maml-hourly version 1 run run1" in out
    code, _, err = run("series", "show", "ghost")
    assert code == 1 and "unknown series 'ghost'" in err


def test_listings_have_json(db_settings: Settings, tmp_path: Path) -> None:
    assert run("ingest", str(long_csv(tmp_path / "h.csv")))[0] == 0
    code, out, _ = run("series", "list", "--json", "--limit", "2")
    assert [s["series_id"] for s in json.loads(out)] == ["sine_a", "sine_b"]
    assert json.loads(out)[0]["n_points"] == 480
    code, out, _ = run("series", "list")
    assert code == 0 and "sine_a" in out


def test_db_upgrade_and_current_on_a_server_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAMLCTL_DATABASE_URL", f"sqlite:///{tmp_path / 'server.db'}")
    code, _, err = run("status")
    assert code == 1 and "has no schema: run `mamlctl db upgrade`" in err
    code, out, _ = run("db", "current", "--json")
    assert json.loads(out)["revision"] is None and json.loads(out)["up_to_date"] is False
    code, out, err = run("db", "upgrade")
    assert code == 0, err
    from mamlctl.registry.db import head_revision

    assert f"revision (empty) -> {head_revision()}" in out
    code, out, _ = run("db", "current", "--json")
    assert json.loads(out)["up_to_date"] is True
    assert run("status")[0] == 0


def test_unreachable_server_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MAMLCTL_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/x?connect_timeout=1"
    )
    code, _out, err = run("status")
    assert (
        code == 1
        and err.startswith("error: cannot reach registry database")
        and err.count("\n") == 1
    )


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg"])
def test_postgres_without_the_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    """psycopg is the ``postgres`` extra: a base install given a PostgreSQL URL is told which
    extra to install, on one line (the import failure simulated: ``import psycopg`` fails)."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setenv("MAMLCTL_DATABASE_URL", f"{scheme}://nobody:pw@127.0.0.1:1/x")
    code, _out, err = run("status")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: database URL postgresql") and "pw" not in err
    assert err.rstrip().endswith("pip install 'mamlctl[postgres]'")


def test_a_plain_postgresql_url_uses_psycopg_3() -> None:
    from mamlctl.registry.db import make_engine

    engine = make_engine("postgresql://nobody@127.0.0.1:1/x")
    assert engine.dialect.driver == "psycopg"
    engine.dispose()
