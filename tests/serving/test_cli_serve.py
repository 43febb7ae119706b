"""``mamlctl serve`` through CliRunner: options reach uvicorn; bad settings are one-line errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mamlctl.cli.app import app


def test_serve_runs_uvicorn_with_the_factory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: seen.update(target=target, **kw))
    monkeypatch.setenv("MAMLCTL_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    result = CliRunner().invoke(
        app,
        [
            *("serve", "--port", "9123", "--workers", "2", "--reload-interval", "500ms"),
            *("--busy-poll", "250us", "--batch-threads", "3"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["target"] == "mamlctl.serving.app:app_from_env" and seen["factory"] is True
    assert (seen["host"], seen["port"], seen["workers"]) == ("127.0.0.1", 9123, 2)
    assert (seen["loop"], seen["http"]) == ("uvloop", "mamlctl.serving.fastpath:ScoreHttpProtocol")
    assert os.environ["MAMLCTL_SERVE_RELOAD_INTERVAL"] == "0.5"
    assert float(os.environ["MAMLCTL_SERVE_BUSY_POLL"]) == pytest.approx(250e-6)
    assert os.environ["MAMLCTL_SERVE_BATCH_THREADS"] == "3"
    assert os.environ["MAMLCTL_SERVE_MAX_FAILED_SHARE"] == "0.1"
    assert os.environ["MAMLCTL_SERVE_ALLOW_EMPTY"] == "0"
    # two workers share one socket: each loads before it accepts (no 503 from a loading one)
    assert os.environ["MAMLCTL_SERVE_LOAD_BEFORE_ACCEPT"] == "1"
    assert os.environ["MAMLCTL_SERVE_FLAG"] == "rank"  # the default flag rule


def test_an_empty_api_token_refuses_to_serve(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Regression: an empty MAMLCTL_API_TOKEN used to turn auth off without a word."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: pytest.fail("server started"))
    monkeypatch.setenv("MAMLCTL_HOME", str(tmp_path))
    monkeypatch.setenv("MAMLCTL_API_TOKEN", "")
    (tmp_path / "models").mkdir()
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "MAMLCTL_API_TOKEN is set but empty" in lines[0]


def test_busy_poll_zero_turns_it_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: None)
    monkeypatch.setenv("MAMLCTL_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    result = CliRunner().invoke(app, ["serve", "--busy-poll", "0"])
    assert result.exit_code == 0, result.output
    assert float(os.environ["MAMLCTL_SERVE_BUSY_POLL"]) == 0.0


@pytest.mark.parametrize(
    "args,message",
    [
        (["serve"], "models folder"),
        (["serve", "--reload-interval", "soon"], "invalid duration"),
        (["serve", "--reload-interval", "0"], "must be positive"),
        (["serve", "--busy-poll", "20ms"], "over the 10ms limit"),
        (["serve", "--busy-poll", "-1us"], "invalid duration"),
        (["serve", "--head-timeout", "0"], "must be positive"),
        (["serve", "--body-timeout", "soon"], "invalid duration"),
    ],
)
def test_serve_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], message: str
) -> None:
    monkeypatch.setenv("MAMLCTL_HOME", str(tmp_path / "empty"))
    if len(args) > 1:
        (tmp_path / "empty" / "models").mkdir(parents=True)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_the_factory_reads_the_serve_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mamlctl.serving.app import app_from_env

    monkeypatch.setenv("MAMLCTL_HOME", str(tmp_path))
    monkeypatch.setenv("MAMLCTL_SERVE_RELOAD_INTERVAL", "0.5")
    monkeypatch.setenv("MAMLCTL_SERVE_BUSY_POLL", "0.00025")
    monkeypatch.setenv("MAMLCTL_SERVE_BATCH_THREADS", "3")
    monkeypatch.setenv("MAMLCTL_SERVE_MAX_FAILED_SHARE", "0.25")
    monkeypatch.setenv("MAMLCTL_SERVE_ALLOW_EMPTY", "1")
    monkeypatch.setenv("MAMLCTL_SERVE_FLAG", "z")
    scoring = app_from_env()
    options = scoring.options
    assert options.flag == "z"
    assert (options.reload_interval, options.busy_poll, options.batch_threads) == (0.5, 0.00025, 3)
    assert (options.max_failed_share, options.allow_empty) == (0.25, True)
    assert scoring.holder.batch_threads == 3 and scoring.busy_poll.window == 0.00025


def test_connection_bounds_reach_the_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Oracle: the documented defaults (README, security), then options and environment."""
    import uvicorn

    from mamlctl.serving.limits import ConnectionLimits

    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: None)
    monkeypatch.setenv("MAMLCTL_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    assert CliRunner().invoke(app, ["serve"]).exit_code == 0
    assert ConnectionLimits.from_env(os.environ) == ConnectionLimits(
        max_head_bytes=16384, head_timeout=10.0, body_timeout=30.0, max_connections=1024
    )
    for name in [n for n in os.environ if n.startswith("MAMLCTL_SERVE_")]:
        monkeypatch.delenv(name)  # what the first run passed on to its workers
    monkeypatch.setenv("MAMLCTL_SERVE_MAX_CONNECTIONS", "7")
    args = ["serve", "--max-head-bytes", "8192", "--head-timeout", "2s", "--body-timeout", "1m"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert ConnectionLimits.from_env(os.environ) == ConnectionLimits(
        max_head_bytes=8192, head_timeout=2.0, body_timeout=60.0, max_connections=7
    )


def test_serve_falls_back_to_the_bounded_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    """A uvicorn whose internals moved (the fast path does not import): the bounded plain
    protocol; without httptools' protocol at all: uvicorn's own."""
    import importlib

    from mamlctl.cli import serve

    real = importlib.import_module
    assert serve.http_protocol() == "mamlctl.serving.fastpath:ScoreHttpProtocol"

    def broken(name: str, *missing: str) -> Any:
        def imp(module: str, package: str | None = None) -> Any:
            if module in missing:
                raise ImportError(f"cannot import name 'STATUS_LINE' ({module})")
            return real(module, package)

        return imp

    monkeypatch.setattr(importlib, "import_module", broken("x", "mamlctl.serving.fastpath"))
    assert serve.http_protocol() == "mamlctl.serving.bounds:BoundedHttpProtocol"
    monkeypatch.setattr(
        importlib,
        "import_module",
        broken("x", "mamlctl.serving.fastpath", "mamlctl.serving.bounds"),
    )
    assert serve.http_protocol() == "httptools"


def test_a_second_serve_reads_back_what_the_first_wrote(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Regression: ``serve`` wrote ``MAMLCTL_SERVE_BUSY_POLL=9.999999999999999e-05`` (float
    repr), which the duration grammar cannot read, so a second ``serve`` in the same process
    environment failed. Oracle: every value written parses back to the same seconds."""
    import uvicorn

    from mamlctl.timeseries.durations import parse_duration

    keys = ("BUSY_POLL", "RELOAD_INTERVAL", "HEAD_TIMEOUT", "BODY_TIMEOUT")
    for key in keys:  # restored at teardown: serve writes them into os.environ
        monkeypatch.setenv(f"MAMLCTL_SERVE_{key}", "1s")
        monkeypatch.delenv(f"MAMLCTL_SERVE_{key}")
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: None)
    monkeypatch.setenv("MAMLCTL_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    first = CliRunner().invoke(app, ["serve", "--busy-poll", "100us", "--reload-interval", "10us"])
    assert first.exit_code == 0, first.output
    written = {key: os.environ[f"MAMLCTL_SERVE_{key}"] for key in keys}
    assert parse_duration(written["BUSY_POLL"]) == 100 * 1e-6
    assert parse_duration(written["RELOAD_INTERVAL"]) == 10 * 1e-6
    assert float(written["BUSY_POLL"]) == 100 * 1e-6  # what the workers read
    second = CliRunner().invoke(app, ["serve"])
    assert second.exit_code == 0, second.output
    assert {key: os.environ[f"MAMLCTL_SERVE_{key}"] for key in keys} == written


def test_a_bad_flag_rule_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAMLCTL_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    result = CliRunner().invoke(app, ["serve", "--flag", "loud"])
    assert result.exit_code == 1
    assert (
        result.output.strip().splitlines()[-1] == "error: --flag must be one of z, rank, got 'loud'"
    )
