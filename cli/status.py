"""``mamlctl status``: per family, what is stored, trained, adapted and stale."""

from __future__ import annotations

from typing import Annotated

import typer


def status_command(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts per family: series, points, initializer versions (trained), serving version,
    series with a current adapted model, and stale ones (adapted from another version than
    the serving one)."""
    from mamlctl.cli.output import emit_json, load_settings, print_table
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import current_revision, transaction

    settings = load_settings()
    with transaction(settings, create=False) as session:
        rows = q.registry_status(session)
    from sqlalchemy.engine import make_url

    url = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    if json_out:
        emit_json({"database": url, "revision": current_revision(settings), "families": rows})
        return
    typer.echo(f"registry database {url}")
    print_table(
        None,
        ["family", "period", "series", "points", "trained", "serving", "adapted", "stale"],
        [
            (
                r.family or "(no family)",
                "" if r.family is None else ("no cycle" if r.period is None else r.period),
                r.series,
                r.points,
                r.initializer_versions or "no",
                r.serving_version,
                r.adapted,
                r.stale,
            )
            for r in rows
        ],
    )
    if not rows:
        typer.echo("empty: start with `mamlctl ingest PATH`")


def register(app: typer.Typer) -> None:
    app.command("status")(status_command)
