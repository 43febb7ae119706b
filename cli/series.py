"""``mamlctl series list|show``: what is stored, and each series' lineage."""

from __future__ import annotations

from typing import Annotated

import typer

series_app = typer.Typer(
    name="series", help="Stored series and their lineage.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@series_app.command("list")
def list_(
    family: Annotated[str | None, typer.Option("--family", help="Only this family.")] = None,
    unassigned: Annotated[
        bool, typer.Option("--unassigned", help="Only series without a family.")
    ] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List series: id, family, points, interval, detected period."""
    from mamlctl.cli.output import emit_json, load_settings, print_table
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction

    settings = load_settings()
    with transaction(settings, create=False) as session:
        infos = q.list_series(session, family=family, unassigned=unassigned, limit=limit)
    if json_out:
        emit_json(infos)
        return
    print_table(
        None,
        ["series", "family", "points", "first", "last", "interval s", "period"],
        [
            (
                s.series_id,
                s.family,
                s.n_points,
                s.first_ts,
                s.last_ts,
                s.interval_seconds,
                s.detected_period if s.detected_period is not None else "",
            )
            for s in infos
        ],
    )


@series_app.command("show")
def show(
    series_id: Annotated[str, typer.Argument(help="Series id.")],
    tail: Annotated[int, typer.Option("--tail", help="Show the last N values.")] = 5,
    json_out: JsonOpt = False,
) -> None:
    """One series and its lineage: family -> current adapted model -> initializer version."""
    from mamlctl.cli.output import emit_json, load_settings
    from mamlctl.domain import ZERO_SHOT
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction

    settings = load_settings()
    with transaction(settings, create=False) as session:
        info = q.get_series(session, series_id)
        fam = q.get_family(session, info.family) if info.family else None
        current = q.current_adapted_model(session, series_id)
        history = q.adapted_model_history(session, series_id)
        init = (
            q.get_initializer_version(
                session,
                registered_model=current.registered_model,
                version=current.initializer_version,
            )
            if current
            else None
        )
        values, positions = q.last_points(session, series_id, tail) if tail > 0 else (None, None)
    if json_out:
        emit_json(
            {
                "series": info,
                "family": fam,
                "current_adapted_model": current,
                # "adapted", or "zero-shot": the family initializer un-adapted (too few points)
                "adaptation": current.adaptation if current else None,
                "initializer_version": init,
                "adapted_models": len(history),
                "tail": None
                if values is None
                else {
                    "positions": positions,
                    "values": values,
                },
            }
        )
        return
    typer.echo(
        f"series {info.series_id}: {info.n_points} points, {info.first_ts} .. {info.last_ts}"
    )
    typer.echo(f"  source {info.source}, interval {info.interval_seconds} s")
    strength = f" (ACF {info.period_strength:.2f})" if info.period_strength else ""
    period = info.detected_period if info.detected_period is not None else "no cycle / not detected"
    typer.echo(f"  detected period {period}{strength}")
    if fam is None:
        typer.echo("  family: none (run `mamlctl families detect` or `families assign`)")
    else:
        typer.echo(
            f"  family {fam.name} ({info.family_origin}): P={fam.period} L={fam.window} "
            f"H={fam.horizon} K={fam.support}"
        )
    if current is None:
        typer.echo("  adapted model: none")
    else:
        typer.echo(
            f"  adapted model {current.path} sha256 {current.sha256[:12]}... at "
            f"{current.adapted_at.isoformat()} ({len(history)} in history)"
        )
        if current.adaptation == ZERO_SHOT:
            typer.echo(
                "  zero-shot: the family initializer, un-adapted (too few points to adapt; "
                "the next `mamlctl adapt` with enough points adapts it)"
            )
        typer.echo(
            f"  initializer {current.registered_model} version {current.initializer_version} "
            f"run {current.initializer_run_id}"
            + (f" [{', '.join(init.aliases)}]" if init and init.aliases else "")
        )
    if values is not None and len(values):
        typer.echo("  last values: " + ", ".join(f"{v:g}" for v in values))


def register(app: typer.Typer) -> None:
    app.add_typer(series_app, name="series")
