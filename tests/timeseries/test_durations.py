"""One duration grammar for ``serve``, ``watch``, ``adapt --stale-after`` and ``gc --grace``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.errors import InputError
from mamlctl.timeseries.durations import parse_duration, parse_timedelta

CASES = [
    ("1h", 3600.0),
    ("5min", 300.0),
    ("90s", 90.0),
    ("7d", 7 * 86400.0),
    ("30m", 1800.0),
    ("2w", 14 * 86400.0),
    ("1.5h", 5400.0),
    ("500ms", 0.5),
    ("100us", 1e-4),
    ("3", 3.0),
    (" 2 Hours ", 7200.0),
]


@pytest.mark.parametrize(("text", "seconds"), CASES)
def test_the_grammar(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)
    assert parse_timedelta(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["soon", "", "-1h", "1mo", "h", "1 h 2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InputError, match="invalid duration"):
        parse_duration(text)


def test_zero_only_when_allowed() -> None:
    with pytest.raises(InputError, match="positive"):
        parse_duration("0s")
    assert parse_duration("0", allow_zero=True) == 0.0


def test_the_commands_share_it() -> None:
    import mamlctl.cli.serve as serve

    for text, seconds in CASES:
        assert serve.parse_duration(text) == pytest.approx(seconds, rel=1e-12)
    runner = CliRunner()
    for args in (
        ["gc", "--grace", "2w", "--dry-run"],
        ["watch", "--interval", "soon"],
        ["adapt", "--family", "x", "--stale-after", "soon"],
        ["serve", "--reload-interval", "soon"],
    ):
        result = runner.invoke(app, args)
        if args[0] == "gc":
            assert "invalid duration" not in result.output
        else:
            assert result.exit_code == 1 and "invalid duration 'soon'" in result.output, args


@pytest.mark.parametrize("seconds", [100 * 1e-6, 1e-5, 0.0, 0.5, 2.0, 250e-6, 1e20, 123.456])
def test_format_seconds_round_trips(seconds: float) -> None:
    """Oracle: the float itself; the grammar and float() both read the text back exactly."""
    from mamlctl.timeseries.durations import format_seconds

    text = format_seconds(seconds)
    assert "e" not in text.lower()
    assert parse_duration(text, allow_zero=True) == seconds == float(text)
