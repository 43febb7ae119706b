"""Engines, sessions and schema migrations of the registry database.

The caller owns the session: build a factory once at the edge and run one transaction per
command or request::

    with open_registry(settings) as Session, Session.begin() as session:
        family = get_family(session, "hourly")

The embedded SQLite default is created and upgraded to the latest Alembic revision on first
use. A server database (``MAMLCTL_DATABASE_URL``) is never migrated implicitly: it must be at
head (``mamlctl db upgrade``), else a :class:`~mamlctl.errors.StoreError` says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mamlctl.errors import ConfigError, StoreError
from mamlctl.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # pragma: no cover - malformed URL is reported by create_engine
        return url


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=10000")
    finally:
        cur.close()


def make_engine(target: Settings | str, *, echo: bool = False) -> Engine:
    """An engine for the settings' database (or a URL). SQLite: foreign keys on, WAL journal."""
    url = target.resolved_database_url if isinstance(target, Settings) else target
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(
            f"invalid database URL {url!r}: expected e.g. sqlite:///path/registry.db "
            "or postgresql+psycopg://user@host/db"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(parsed, echo=echo)
    except (SQLAlchemyError, ImportError) as err:
        raise ConfigError(f"cannot use database URL {_redact(url)}: {err}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    """The newest migration revision shipped with this package."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(target: Settings | str | Engine) -> str | None:
    """The database's Alembic revision, or None for an empty (never migrated) database."""
    from alembic.runtime.migration import MigrationContext

    engine, owned = _engine_of(target)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as err:
        raise StoreError(
            f"cannot reach registry database {_redact(str(engine.url))}: {_first_line(err)}"
        ) from None
    finally:
        if owned:
            engine.dispose()


def upgrade_schema(target: Settings | str | Engine, revision: str = "head") -> str:
    """Run Alembic ``upgrade`` to ``revision`` programmatically; returns the new revision."""
    from alembic import command

    engine, owned = _engine_of(target)
    try:
        command.upgrade(_alembic_config(engine), revision)
        rev = current_revision(engine)
        assert rev is not None
        return rev
    except OperationalError as err:
        raise StoreError(
            f"cannot migrate registry database {_redact(str(engine.url))}: {_first_line(err)}"
        ) from None
    finally:
        if owned:
            engine.dispose()


def ensure_schema(engine: Engine, *, embedded: bool) -> None:
    """Upgrade an embedded database to head; require a server database to be at head."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if embedded:
        upgrade_schema(engine)
        return
    if current is None:
        raise StoreError(
            f"registry database {_redact(str(engine.url))} has no schema: run `mamlctl db upgrade`"
        )
    raise StoreError(
        f"registry database {_redact(str(engine.url))} is at revision {current}, "
        f"this mamlctl needs {head}: run `mamlctl db upgrade`"
    )


@contextmanager
def open_registry(
    settings: Settings, *, migrate: bool | None = None
) -> Iterator[sessionmaker[Session]]:
    """Yield a session factory on a database at head; dispose the engine afterwards.

    ``migrate``: upgrade when behind. Default: only for the embedded SQLite database.
    """
    if settings.is_embedded_database:
        settings.ensure_home()
    engine = make_engine(settings)
    try:
        embedded = settings.is_embedded_database if migrate is None else migrate
        ensure_schema(engine, embedded=embedded)
        yield sessionmaker(engine, expire_on_commit=False)
    finally:
        engine.dispose()


def table_names(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())


def _engine_of(target: Settings | str | Engine) -> tuple[Engine, bool]:
    if isinstance(target, Engine):
        return target, False
    return make_engine(target), True


def _first_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None) or err
    return " ".join(str(orig).split())[:300]


@contextmanager
def transaction(settings: Settings, *, migrate: bool | None = None) -> Iterator[Session]:
    """One command = one transaction: commit on success, roll back on any error.

    Database failures surface as :class:`StoreError` with one line; domain errors pass through.
    """
    from mamlctl.errors import MamlctlError

    with open_registry(settings, migrate=migrate) as factory:
        try:
            with factory.begin() as session:
                yield session
        except MamlctlError:
            raise
        except SQLAlchemyError as err:
            raise StoreError(f"registry database error: {_first_line(err)}") from None
