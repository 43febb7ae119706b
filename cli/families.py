"""``mamlctl families detect|list|show|assign|create``: group series by periodicity."""

from __future__ import annotations

from typing import Annotated

import typer

families_app = typer.Typer(
    name="families",
    help="Families: series sharing a sampling interval and dominant period (P, L, H, K).",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@families_app.command("detect")
def detect(
    series: Annotated[
        list[str] | None, typer.Argument(help="Series ids (default: every series).")
    ] = None,
    reassign: Annotated[
        bool,
        typer.Option("--reassign", help="Also move series the user assigned explicitly."),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Detect each series' interval and dominant period and put it into its named family.

    Periodogram peaks propose periods, the autocorrelation confirms them (significance test);
    "no cycle" is a valid answer (family <interval>-nocycle). New families get default L/H/K;
    existing families keep theirs.
    """
    from collections import Counter

    from mamlctl.cli.output import emit_json, load_settings, print_table
    from mamlctl.cli.progress_tty import tty_progress as progress
    from mamlctl.registry.db import transaction
    from mamlctl.registry.series_queries import count_series
    from mamlctl.stages.detect import detect_families

    settings = load_settings()
    with transaction(settings) as session, progress() as bar:
        total = len(series) if series else count_series(session)
        task = bar.add_task("detecting", total=total, info="")
        dets = detect_families(
            session,
            series_ids=series or None,
            reassign=reassign,
            on_progress=lambda k: bar.update(task, advance=k),
        )
        from mamlctl.registry.family_queries import list_families

        fams = {f.name: f for f in list_families(session)}
    counts = Counter(d.family.name if d.family else None for d in dets)
    if json_out:
        emit_json(
            {
                "series": len(dets),
                "families": {
                    name: {**_family_dict(fams[name]), "series": n}
                    for name, n in counts.items()
                    if name is not None
                },
                "unassigned": [
                    {"series_id": d.series_id, "note": d.note} for d in dets if d.family is None
                ],
                "detections": [
                    {
                        "series_id": d.series_id,
                        "interval_seconds": d.interval_seconds,
                        "period": d.estimate.period,
                        "strength": round(d.estimate.strength, 4),
                        "family": d.family.name if d.family else None,
                        "note": d.note,
                    }
                    for d in dets
                ],
            }
        )
        return
    rows = []
    for name, n in sorted(counts.items(), key=lambda kv: (kv[0] is None, -kv[1])):
        if name is None:
            rows.append(("(too short)", "", "", "", "", n))
            continue
        f = fams[name]
        period = "no cycle" if f.period is None else f.period
        rows.append((name, period, f.window, f.horizon, f.support, n))
    print_table("families detected", ["family", "period P", "L", "H", "K", "series"], rows)


@families_app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List families with their P/L/H/K and series counts."""
    from mamlctl.cli.output import emit_json, load_settings, print_table
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction

    settings = load_settings()
    with transaction(settings, create=False) as session:
        fams = q.list_families(session)
        counts = {s.family: s.series for s in q.registry_status(session)}
    if json_out:
        emit_json([{**_family_dict(f), "series": counts.get(f.name, 0)} for f in fams])
        return
    print_table(
        None,
        ["family", "period P", "interval s", "L", "H", "K", "series", "model"],
        [
            (
                f.name,
                "no cycle" if f.period is None else f.period,
                f.interval_seconds,
                f.window,
                f.horizon,
                f.support,
                counts.get(f.name, 0),
                f.registered_model,
            )
            for f in fams
        ],
    )


def _family_dict(f: object) -> dict[str, object]:
    from dataclasses import asdict

    out = asdict(f)  # type: ignore[call-overload]
    out["registered_model"] = f.registered_model  # type: ignore[attr-defined]
    return dict(out)


@families_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Family name.")],
    limit: Annotated[int, typer.Option("--limit", help="Series ids to list.")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """One family: P/L/H/K, its series, its recorded initializer versions."""
    from mamlctl.cli.output import emit_json, load_settings
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction

    settings = load_settings()
    with transaction(settings, create=False) as session:
        fam = q.get_family(session, name)
        ids = q.series_ids_in_family(session, name)
        versions = q.list_initializer_versions(session, name)
    if json_out:
        emit_json({**_family_dict(fam), "series": ids, "initializer_versions": versions})
        return
    period = "no cycle" if fam.period is None else str(fam.period)
    typer.echo(f"family {fam.name}: period {period}, interval {fam.interval_seconds} s")
    typer.echo(f"  window L={fam.window} horizon H={fam.horizon} support K={fam.support}")
    typer.echo(f"  registered model {fam.registered_model}, alias {fam.alias}")
    shown = ", ".join(ids[:limit]) + (
        f", ... ({len(ids) - limit} more)" if len(ids) > limit else ""
    )
    typer.echo(f"  {len(ids)} series: {shown}")
    if versions:
        for v in versions:
            tag = f" [{', '.join(v.aliases)}]" if v.aliases else ""
            typer.echo(f"  version {v.version}: run {v.run_id}{tag}")
    else:
        typer.echo("  no initializer trained yet")


@families_app.command("assign")
def assign(
    family: Annotated[str, typer.Argument(help="Existing family name.")],
    series: Annotated[list[str], typer.Argument(help="Series ids to put into the family.")],
    json_out: JsonOpt = False,
) -> None:
    """Put series into a family explicitly (detection will not move them back).

    Every series must hold at least one window (the family's L points); otherwise nothing
    changes. A series with fewer than K points is served zero-shot after `adapt`.
    """
    from mamlctl.cli.output import emit_json, load_settings
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction

    settings = load_settings()
    with transaction(settings) as session:
        n = q.assign_family(session, family, series)
    if json_out:
        emit_json({"family": family, "assigned": n, "series": series})
    else:
        typer.echo(f"assigned {n} series to family {family}")


@families_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Family name.")],
    window: Annotated[int, typer.Option("--window", "-L", help="Input window L.")],
    horizon: Annotated[int, typer.Option("--horizon", "-H", help="Forecast horizon H.")],
    support: Annotated[
        int | None,
        typer.Option(
            "--support", "-K", help="Support points K, window included (default L+P, or L+H)."
        ),
    ] = None,
    period: Annotated[
        int | None, typer.Option("--period", "-P", help="Period P (omit for no cycle).")
    ] = None,
    interval: Annotated[
        str | None, typer.Option("--interval", help="Sampling interval, e.g. 1h, 5min.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a family, or change an existing one's P/L/H/K."""
    from mamlctl.cli.output import emit_json, load_settings
    from mamlctl.domain import Family, validate_family_name
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction
    from mamlctl.timeseries.periodicity import parse_interval

    validate_family_name(name)
    settings = load_settings()
    k = support if support is not None else window + (period or horizon)
    fam = Family(
        name=name,
        period=period,
        interval_seconds=parse_interval(interval) if interval else None,
        window=window,
        horizon=horizon,
        support=k,
    )
    with transaction(settings) as session:
        stored = q.upsert_family(session, fam)
    if json_out:
        emit_json(_family_dict(stored))
    else:
        typer.echo(
            f"family {stored.name}: P={stored.period} L={stored.window} H={stored.horizon} "
            f"K={stored.support}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(families_app, name="families")
