"""``mamlctl forecast``: the next H values of each series from its exported model, as a Nixtla
frame (``unique_id, ds, yhat`` + ``yhat-lo-<l>``/``yhat-hi-<l>`` per level).

The stage is :mod:`mamlctl.stages.forecast` (the server's runtime on the exported files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

FamilyOpt = Annotated[str | None, typer.Option("--family", help="Only this family's series.")]
SeriesOpt = Annotated[
    list[str] | None,
    typer.Option("--series", help="Only these series (repeat the option). Default: all."),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Write the frame to this .csv, .csv.gz or .parquet file (default: CSV on stdout).",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print the rows as JSON (ds as ISO 8601 wall-clock time)."),
]


def forecast_command(
    family: FamilyOpt = None,
    series: SeriesOpt = None,
    level: Annotated[
        str | None,
        typer.Option(
            "--level",
            help="Prediction-interval levels in percent, e.g. 80,95: adds yhat-lo-<l> and "
            "yhat-hi-<l> = yhat -/+ z_{(1+l)/2} * sigma (Gaussian on the served sigma).",
        ),
    ] = None,
    out: OutOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Forecast the next H values of each series with its current exported model, from its
    last L stored points. ds continues each series' timestamps (last + k * interval) or its
    integer positions."""
    from mamlctl.cli.output import load_settings
    from mamlctl.stages.forecast import forecast_frame, load_targets, parse_levels

    levels = parse_levels(level)
    if out is not None:
        _check_out(out)
    settings = load_settings()
    settings.require_home()
    targets = load_targets(settings, family=family, series_ids=tuple(series or ()))
    frame = forecast_frame(targets, models_dir=settings.models_dir, levels=levels)
    render(frame, out=out, json_out=json_out, what="forecast rows")


def _check_out(out: Path) -> None:
    from mamlctl.errors import InputError

    if not out.name.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        raise InputError(f"--out {out}: use a .csv, .csv.gz or .parquet file name")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")


def render(frame: object, *, out: Path | None, json_out: bool, what: str) -> None:
    """Write the frame to ``out`` and/or print it (JSON rows, or CSV on stdout)."""
    from mamlctl.cli.output import emit_json
    from mamlctl.stages.forecast import csv_text, records_json, write_frame

    if out is not None:
        write_frame(frame, out)
    if json_out:
        emit_json(records_json(frame))
    elif out is None:
        typer.echo(csv_text(frame), nl=False)
    else:
        typer.echo(f"wrote {len(frame)} {what} to {out}", err=True)  # type: ignore[arg-type]


def register(app: typer.Typer) -> None:
    app.command("forecast")(forecast_command)
