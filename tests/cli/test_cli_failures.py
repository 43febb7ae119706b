"""Every CLI failure is one line on stderr and exit code 1 (usage errors alone exit 2), and
first use of a fresh home is safe when several commands start at once.

Oracles: the exit-code contract of ``mamlctl.cli.app`` (1 for any failure, 2 for usage), the
line count of stderr, and the filesystem (nothing created where the command must not write).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.settings import Settings


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_newer_unknown_revision_is_one_line_and_db_current_says_newer(
    sqlite_url: str, tmp_settings: Settings
) -> None:
    with sqlite3.connect(tmp_settings.database_path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    code, _, err = run("status")
    assert "newer than this mamlctl" in one_line_error(code, err)
    code, out, err = run("db", "current")
    assert code == 0, err
    assert "newer than this mamlctl" in out and "behind" not in out
    code, _, err = run("db", "upgrade")
    assert "newer than this mamlctl" in one_line_error(code, err)


def test_corrupt_database_file_is_one_line(tmp_settings: Settings) -> None:
    tmp_settings.ensure_home()
    tmp_settings.database_path.write_bytes(b"this is not a database" * 100)
    for args in (["status"], ["families", "list"], ["db", "current"]):
        code, _, err = run(*args)
        assert "registry database" in one_line_error(code, err)


def test_export_to_a_bad_path_is_one_line(sqlite_url: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run("export", "--series", "s0", "--output", str(blocker / "sub" / "m.onnx"))
    assert "--output" in one_line_error(code, err)


def test_home_below_a_regular_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MAMLCTL_HOME", str(blocker / "home"))
    data = tmp_path / "d.csv"
    data.write_text("series_id,value\na,1\na,2\n")
    for args in (["ingest", str(data)], ["families", "create", "f", "-L", "2", "-H", "1"]):
        code, _, err = run(*args)
        assert "home" in one_line_error(code, err)


def test_busy_port_for_serve_is_one_line_exit_1(tmp_settings: Settings) -> None:
    tmp_settings.ensure_home()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        code, _, err = run("serve", "--host", "127.0.0.1", "--port", str(port))
    assert f"127.0.0.1:{port}" in one_line_error(code, err)


@pytest.mark.parametrize("args", [["status"], ["series", "list"], ["models", "list"]])
def test_read_only_commands_on_a_missing_home_fail(tmp_settings: Settings, args: list[str]) -> None:
    code, _, err = run(*args)
    assert "no mamlctl home" in one_line_error(code, err)
    assert not tmp_settings.home.exists()


def test_usage_errors_alone_exit_2() -> None:
    code, _, _ = run("status", "--no-such-option")
    assert code == 2


def test_three_commands_on_a_fresh_home_race_safely(tmp_settings: Settings) -> None:
    # Oracle: all three exit 0 and all three families exist; before the migration lock two of
    # them died with "table families already exists".
    env = {**os.environ, "MAMLCTL_HOME": str(tmp_settings.home), "OMP_NUM_THREADS": "1"}
    code = "import sys; from mamlctl.cli.app import main; sys.argv[0] = 'mamlctl'; main()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, "families", "create", f"f{i}", "-L", "2", "-H", "1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    for p in procs:
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()
    assert [rc for rc, _ in results] == [0, 0, 0], results
    listed = run("families", "list", "--json")
    assert listed[0] == 0 and all(f'"f{i}"' in listed[1] for i in range(3))
