"""``mamlctl gc``: delete model files no registry row references (after a grace period)."""

from __future__ import annotations

from typing import Annotated

import typer


def gc_command(
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            help="Keep unreferenced files younger than this (e.g. 30min, 24h, 7d; 0 for none). "
            "Longer than any adaptation job: a file just written is recorded only when its "
            "job commits.",
        ),
    ] = "24h",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be removed; delete nothing.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Remove model files under the home's models/ that no adapted-model row (current or
    history) references and that are older than --grace."""
    from mamlctl.cli.output import emit_json, load_settings
    from mamlctl.registry.db import transaction
    from mamlctl.registry.model_gc import collect_unreferenced
    from mamlctl.registry.model_queries import referenced_model_paths
    from mamlctl.timeseries.durations import parse_duration

    grace_s = parse_duration(grace, allow_zero=True)
    settings = load_settings()
    with transaction(settings, create=False) as session:
        referenced = referenced_model_paths(session)
    report = collect_unreferenced(
        settings.models_dir, referenced=referenced, grace_s=grace_s, dry_run=dry_run
    )
    if json_out:
        emit_json(
            {
                "models_dir": settings.models_dir,
                "dry_run": report.dry_run,
                "grace_seconds": report.grace_s,
                "removed": list(report.removed),
                "removed_bytes": report.removed_bytes,
                "kept_referenced": report.kept_referenced,
                "kept_young": report.kept_young,
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    for c in report.removed:
        typer.echo(f"{verb} {c.relpath} ({c.size} bytes)")
    typer.echo(
        f"{verb} {len(report.removed)} model file(s), {report.removed_bytes} bytes; kept "
        f"{report.kept_referenced} referenced and {report.kept_young} younger than {grace}"
    )


def register(app: typer.Typer) -> None:
    app.command("gc")(gc_command)
