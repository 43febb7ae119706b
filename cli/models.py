"""``mamlctl models list``: registered initializer versions, aliases and validation metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mamlctl.registry.mlflow_models import InitializerVersion


def version_row(version: InitializerVersion) -> dict[str, Any]:
    """The JSON shape of one version (also what the table shows)."""
    ref = version.ref
    return {
        "family": ref.family,
        "registered_model": ref.registered_model,
        "version": ref.version,
        "aliases": list(ref.aliases),
        "uri": f"models:/{ref.registered_model}/{ref.version}",
        "run_id": ref.run_id,
        "run_status": version.run_status,
        "source_uri": ref.source_uri,
        "created_at": ref.created_at,
        "description": version.description,
        "tags": version.tags,
        "metrics": ref.metrics,
    }


def _metrics_cell(metrics: dict[str, float]) -> str:
    return " ".join(f"{k.removeprefix('val_')}={v:.4g}" for k, v in metrics.items())


def versions_table(rows: list[dict[str, Any]], *, title: str | None = None) -> Any:
    """The table of ``models list``: readable at 80 columns. Family, model, version and aliases
    never wrap nor shrink (no ellipsis); the date and the metrics fold onto more lines (the run
    status is in ``--json``)."""
    from rich.table import Table

    cells = [
        (
            r["family"],
            r["registered_model"],
            str(r["version"]),
            ",".join(r["aliases"]),
            r["created_at"].strftime("%Y-%m-%d") if r["created_at"] else "",
            _metrics_cell(r["metrics"]).replace(" ", "\n"),  # one metric a line
        )
        for r in rows
    ]
    table = Table(title=title, title_justify="left")
    heads = ["Family", "Model", "Ver", "Aliases", "Created", "Validation"]
    for i, head in enumerate(heads):
        if i < 4:
            width = max([len(head), *(len(c[i]) for c in cells)])
            table.add_column(head, no_wrap=True, min_width=width, overflow="fold")
        else:
            table.add_column(head, overflow="fold")
    for c in cells:
        table.add_row(*c)
    return table


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(
        help="Registered initializers (one MLflow registered model per family).",
        no_args_is_help=True,
    )

    @models_app.command("list")
    def list_models(
        family: Annotated[
            str | None,
            typer.Option("--family", "-f", help="Only this family's versions."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    ) -> None:
        """Versions, aliases (champion, challenger, ...) and final validation metrics."""
        from mamlctl.cli.output import emit_json, load_settings
        from mamlctl.registry.mlflow_store import open_store

        settings = load_settings()
        if settings.is_embedded_tracking:
            settings.require_home()  # read-only: a missing home is an error, not "no models"
        settings.ensure_home()
        store = open_store(settings)
        versions = store.list_versions(family=family)
        rows = [version_row(v) for v in versions]
        if as_json:
            emit_json(rows)
            return
        from mamlctl.cli.output import console

        console().print(versions_table(rows, title=f"Initializers in {store.tracking_uri}"))

    app.add_typer(models_app, name="models")
