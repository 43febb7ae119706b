"""``mamlctl db upgrade|current``: the registry database's Alembic schema revision."""

from __future__ import annotations

from typing import Annotated

import typer

db_app = typer.Typer(
    name="db",
    help="Registry database schema (Alembic): upgrade a server database, show its revision.",
    no_args_is_help=True,
)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def upgrade(
    revision: Annotated[str, typer.Option("--revision", help="Target Alembic revision.")] = "head",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create or upgrade the registry schema (MAMLCTL_DATABASE_URL, else the embedded SQLite)."""
    from mamlctl.cli.output import emit_json, load_settings
    from mamlctl.registry.db import current_revision, upgrade_schema

    settings = load_settings()
    if settings.is_embedded_database:
        settings.ensure_home()
    before = current_revision(settings)
    after = upgrade_schema(settings, revision)
    url = _redacted(settings.resolved_database_url)
    if json_out:
        emit_json({"database": url, "from": before, "to": after})
    else:
        typer.echo(f"registry database {url}: revision {before or '(empty)'} -> {after}")


@db_app.command("current")
def current(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the database's schema revision and whether it is at this mamlctl's head."""
    from mamlctl.cli.output import emit_json, load_settings
    from mamlctl.registry.db import current_revision, head_revision

    settings = load_settings()
    url = _redacted(settings.resolved_database_url)
    if settings.is_embedded_database and not settings.database_path.exists():
        rev = None
    else:
        rev = current_revision(settings)
    head = head_revision()
    if json_out:
        emit_json({"database": url, "revision": rev, "head": head, "up_to_date": rev == head})
        return
    state = "up to date" if rev == head else "behind: run `mamlctl db upgrade`"
    typer.echo(f"registry database {url}: revision {rev or '(empty)'}, head {head} ({state})")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
