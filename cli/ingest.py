"""``mamlctl ingest PATH...``: read, validate and store series (one transaction).

Formats are told from the header: mamlctl's long ``series_id,[timestamp,]value``, the Nixtla
long frame ``unique_id,ds,y``, a Prophet frame ``ds,y`` (one series: its id is the file name or
``--series-id``), NAB ``timestamp,value`` and M4's wide CSV; CSV or Parquet. ``-`` reads CSV
from stdin (spooled to a temporary file, then parsed as strictly as a file).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

NAN_HELP = (
    "NaN/missing-value policy. reject (default): a NaN anywhere is an error naming file, series "
    "and position, and nothing is stored. interpolate: fill NaN runs linearly between "
    "neighbours (edges take the nearest value); the count filled is reported."
)

ORDER_HELP = (
    "Timestamp order policy. strict (default): timestamps must strictly increase; a duplicate "
    "or a step back is an error. file: keep every row in file order (positions define the "
    "order; timestamps are stored as given); the count of such steps is reported. Real NAB "
    "files need it (clock changes repeat timestamps)."
)


def ingest_command(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Files or folders (a folder = every .csv/.csv.gz/.parquet below it); - reads "
            "CSV from stdin."
        ),
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="auto (from the header), long (series_id,[timestamp,]value), nixtla "
            "(unique_id,ds,y), prophet (ds,y; one series: id = file name or --series-id), m4 "
            "(wide CSV), nab (timestamp,value; series id = file name).",
        ),
    ] = "auto",
    interval: Annotated[
        str | None,
        typer.Option(
            "--interval",
            help="Sampling interval, e.g. 5min, 1h, 1d, 1w. Default: median timestamp step, or "
            "the M4 file name's frequency (Hourly/Daily/Weekly), else unknown.",
        ),
    ] = None,
    nan: Annotated[str, typer.Option("--nan", help=NAN_HELP)] = "reject",
    order: Annotated[str, typer.Option("--order", help=ORDER_HELP)] = "strict",
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="merge (default): the file holds each series from its start; the overlap must "
            "match the stored points, only new points are added (re-ingest is idempotent). "
            "append: the file's points continue the stored series (e.g. an M4 test file).",
        ),
    ] = "merge",
    id_col: Annotated[
        str | None,
        typer.Option("--id-col", help="Column of series ids (default: series_id or unique_id)."),
    ] = None,
    time_col: Annotated[
        str | None,
        typer.Option("--time-col", help="Column of timestamps (default: timestamp or ds)."),
    ] = None,
    value_col: Annotated[
        str | None, typer.Option("--value-col", help="Column of values (default: value or y).")
    ] = None,
    series_id: Annotated[
        str | None,
        typer.Option(
            "--series-id",
            help="Id of the one series of a file without an id column (Prophet ds,y; NAB; "
            "stdin). Default: the file name without its suffixes (stdin: 'stdin').",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Ingest series files into the registry database.

    Every file is read and validated before anything is written; any problem (malformed CSV,
    non-numeric or infinite value, NaN under --nan reject, duplicate or non-monotonic timestamp,
    a changed historical value) stops with one line naming file, series and problem, and the
    database stays exactly as it was.
    """
    from mamlctl.cli.output import emit_json, load_settings, print_table
    from mamlctl.cli.progress_tty import tty_progress as progress
    from mamlctl.domain import validate_series_id
    from mamlctl.errors import InputError
    from mamlctl.registry.db import transaction
    from mamlctl.stages.ingest import ingest, prepare_ingest
    from mamlctl.timeseries.periodicity import parse_interval
    from mamlctl.timeseries.readers import Columns

    if fmt not in ("auto", "long", "nixtla", "prophet", "m4", "nab"):
        raise InputError(f"unknown --format {fmt!r}: use auto, long, nixtla, prophet, m4 or nab")
    if nan not in ("reject", "interpolate"):
        raise InputError(f"unknown --nan {nan!r}: use reject or interpolate")
    if order not in ("strict", "file"):
        raise InputError(f"unknown --order {order!r}: use strict or file")
    if mode not in ("merge", "append"):
        raise InputError(f"unknown --mode {mode!r}: use merge or append")
    interval_seconds = parse_interval(interval) if interval is not None else None
    if series_id is not None:
        validate_series_id(series_id)
    columns = Columns(id=id_col, time=time_col, value=value_col)
    settings = load_settings()

    with tempfile.TemporaryDirectory(prefix="mamlctl-stdin-") as spool, progress() as bar:
        paths = [_spool_stdin(Path(spool)) if str(p) == "-" else p for p in paths]
        task = bar.add_task("reading", total=None, info="")
        prepared = prepare_ingest(
            paths,
            fmt=fmt,
            interval_seconds=interval_seconds,
            nan=nan,
            order=order,
            on_file=lambda p: bar.update(task, advance=1, info=p.name),
            columns=columns,
            series_id=series_id,
        )
        store = bar.add_task("storing", total=len(prepared.batch), info="")
        with transaction(settings) as session:
            summary = ingest(
                session,
                prepared,
                mode=mode,
                on_progress=lambda k: bar.update(store, advance=k),
            )

    nan_line = f"NaN policy: {nan}" + (
        f" ({prepared.interpolated} values interpolated)" if nan == "interpolate" else ""
    )
    order_line = f"Timestamp order: {order}" + (
        f" ({prepared.unordered} repeated/backward steps kept)" if order == "file" else ""
    )
    totals = {
        "files": len(prepared.files),
        "series": len(summary.results),
        "series_new": summary.count("new"),
        "series_appended": summary.count("appended"),
        "series_unchanged": summary.count("unchanged"),
        "points_read": sum(f.points for f in prepared.files),
        "points_added": summary.points_added,
        "nan_policy": nan,
        "interpolated": prepared.interpolated,
        "order_policy": order,
        "unordered_steps": prepared.unordered,
        "mode": mode,
    }
    if json_out:
        emit_json({**totals, "files_detail": list(prepared.files)})
        return
    if len(prepared.files) <= 20:
        print_table(
            None,
            ["file", "format", "series", "points read"],
            [(Path(f.path).name, f.format, f.series, f.points) for f in prepared.files],
        )
    typer.echo(
        f"{totals['series']} series ({totals['series_new']} new, {totals['series_appended']} "
        f"appended, {totals['series_unchanged']} unchanged), {totals['points_added']} points "
        f"added of {totals['points_read']} read from {totals['files']} file(s). {nan_line}. "
        f"{order_line}."
    )


def _spool_stdin(folder: Path) -> Path:
    """Copy stdin to ``folder/stdin.csv`` (once) so that it is read like any CSV file."""
    import sys

    path = folder / "stdin.csv"
    if not path.exists():
        with path.open("wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
    return path


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest_command)
