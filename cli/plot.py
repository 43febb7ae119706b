"""``mamlctl plot SERIES --out f.png``: history, served one-step forecast and band, flags.

The stage is :func:`mamlctl.stages.plot.plot_series`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer


def _since(text: str | None) -> datetime | int | None:
    from mamlctl.errors import InputError

    if text is None:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--since {text!r} is not an ISO 8601 time or a position") from None


def plot_command(
    series_id: Annotated[str, typer.Argument(metavar="SERIES", help="The series to draw.")],
    out: Annotated[Path, typer.Option("--out", help="The PNG file to write.")],
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only points from this timestamp (ISO 8601, UTC) or position on.",
        ),
    ] = None,
    k: Annotated[float, typer.Option("--k", help="Band: forecast +- k * sigma.")] = 3.0,
    width: Annotated[int, typer.Option("--width", help="Picture width, pixels.")] = 1200,
    height: Annotated[int, typer.Option("--height", help="Picture height, pixels.")] = 500,
) -> None:
    """Draw a series' stored history with its current model's one-step forecast and band
    (forecast +- k * sigma, as the observe loop serves it) and its flagged points."""
    from mamlctl.cli.output import load_settings
    from mamlctl.errors import InputError
    from mamlctl.stages.plot import plot_series

    if out.suffix.lower() != ".png":
        raise InputError(f"--out must name a .png file, got {out}")
    settings = load_settings()
    settings.require_home()
    data = plot_series(
        settings,
        series_id,
        out,
        since=_since(since),
        k=k,
        width=width,
        height=height,
    )
    typer.echo(f"{out}: {data.values.shape[0]} points, {data.flagged_positions.size} flagged")


def register(app: typer.Typer) -> None:
    app.command("plot")(plot_command)
