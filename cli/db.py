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
    from contextlib import nullcontext

    from mamlctl.cli.output import emit_json, load_settings
    from mamlctl.registry.db import current_revision, upgrade_schema
    from mamlctl.registry.locks import file_lock

    settings = load_settings()
    if settings.is_embedded_database:
        settings.ensure_home()
    lock = (
        file_lock(settings.migration_lock_path, purpose="registry database migration")
        if settings.is_embedded_database
        else nullcontext()
    )
    with lock:
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
    from mamlctl.registry.db import current_revision, head_revision, revision_state

    settings = load_settings()
    url = _redacted(settings.resolved_database_url)
    if settings.is_embedded_database and not settings.database_path.exists():
        rev = None
    else:
        rev = current_revision(settings)
    head = head_revision()
    state = revision_state(rev)
    if json_out:
        emit_json(
            {
                "database": url,
                "revision": rev,
                "head": head,
                "up_to_date": rev == head,
                "state": state,
            }
        )
        return
    state = {
        "up to date": "up to date",
        "newer": "newer than this mamlctl: upgrade mamlctl",
    }.get(state, "behind: run `mamlctl db upgrade`")
    typer.echo(f"registry database {url}: revision {rev or '(empty)'}, head {head} ({state})")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
