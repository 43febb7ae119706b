"""``mamlctl anomalies list|show|ack``: the records ``POST /v1/observe`` writes for flagged
observations (registry table ``anomalies``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

anomalies_app = typer.Typer(
    name="anomalies",
    help="Anomalies flagged by the observe loop of `mamlctl serve`: list, show, acknowledge.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    from mamlctl.errors import InputError

    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--since {text!r} is not an ISO 8601 date or time") from None


@anomalies_app.command("list")
def list_(
    since: Annotated[
        str | None, typer.Option("--since", help="Flagged at or after (ISO 8601, UTC).")
    ] = None,
    family: Annotated[str | None, typer.Option("--family", help="Only this family.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="open or acknowledged.")] = None,
    series: Annotated[str | None, typer.Option("--series", help="Only this series.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 1000,
    json_out: JsonOpt = False,
) -> None:
    """Anomaly records, oldest first: id, series, timestamp, value, forecast, z, status."""
    from mamlctl.cli.output import emit_json, load_settings, print_table
    from mamlctl.registry.anomaly_queries import list_anomalies
    from mamlctl.registry.db import transaction

    with transaction(load_settings(), create=False) as session:
        records = list_anomalies(
            session,
            since=_since(since),
            family=family,
            status=status,
            series_id=series,
            limit=limit,
        )
    if json_out:
        emit_json(records)
        return
    print_table(
        None,
        ["id", "series", "family", "timestamp", "value", "forecast", "z", "status"],
        [
            (
                r.id,
                r.series_id,
                r.family,
                r.timestamp,
                f"{r.value:g}",
                f"{r.forecast:g}",
                f"{r.z:.1f}",
                r.status,
            )
            for r in records
        ],
    )


@anomalies_app.command("show")
def show(
    anomaly_id: Annotated[int, typer.Argument(help="Record id (see `anomalies list`).")],
    json_out: JsonOpt = False,
) -> None:
    """One anomaly record with its numbers and the model that flagged it."""
    from mamlctl.cli.output import emit_json, load_settings
    from mamlctl.registry.anomaly_queries import get_anomaly
    from mamlctl.registry.db import transaction

    with transaction(load_settings(), create=False) as session:
        rec = get_anomaly(session, anomaly_id)
    if json_out:
        emit_json(rec)
        return
    typer.echo(
        f"anomaly {rec.id} [{rec.status}]: series {rec.series_id} ({rec.family}) at {rec.timestamp}"
    )
    typer.echo(
        f"  value {rec.value:g}, forecast {rec.forecast:g}, sigma {rec.sigma:g}: "
        f"z {rec.z:.2f}, -log10 p {rec.magnitude:.1f}, score {rec.anomaly_score:.6f}"
    )
    typer.echo(
        f"  model {rec.registered_model} version {rec.initializer_version} "
        f"sha256 {rec.model_sha256[:12]}..., flagged {rec.created_at.isoformat()}"
    )
    if rec.acknowledged_at is not None:
        typer.echo(f"  acknowledged {rec.acknowledged_at.isoformat()}")


@anomalies_app.command("ack")
def ack(
    anomaly_ids: Annotated[list[int], typer.Argument(help="Record ids to acknowledge.")],
    json_out: JsonOpt = False,
) -> None:
    """Mark records acknowledged (all or none: an unknown id changes nothing)."""
    from mamlctl.cli.output import emit_json, load_settings
    from mamlctl.registry.anomaly_queries import acknowledge
    from mamlctl.registry.db import transaction

    with transaction(load_settings(), create=False) as session:
        records = acknowledge(session, anomaly_ids)
    if json_out:
        emit_json(records)
        return
    for rec in records:
        typer.echo(f"anomaly {rec.id} ({rec.series_id} at {rec.timestamp}): {rec.status}")


def register(app: typer.Typer) -> None:
    app.add_typer(anomalies_app, name="anomalies")
