"""Engines, sessions and schema migrations of the registry database.

The caller owns the session: build a factory once at the edge and run one transaction per
command or request::

    with open_registry(settings) as Session, Session.begin() as session:
        family = get_family(session, "hourly")

The embedded SQLite default is created and upgraded to the latest Alembic revision on first
use, under a file lock in the home so that commands started together on a fresh home do not
race the migration. Read-only commands pass ``create=False`` and get a
:class:`~mamlctl.errors.NotFoundError` for a home that does not exist. A database at a revision
this mamlctl does not know (migrated by a newer mamlctl) is refused with a
:class:`~mamlctl.errors.StoreError` saying so, never "upgraded".

A server database (``MAMLCTL_DATABASE_URL``) is never migrated implicitly: it must be at
head (``mamlctl db upgrade``), else a :class:`~mamlctl.errors.StoreError` says so. PostgreSQL
goes through psycopg 3 (the ``postgres`` extra): ``postgresql://`` means
``postgresql+psycopg://``, and without the driver installed a :class:`ConfigError` names the
extra to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mamlctl.errors import ConfigError, NotFoundError, StoreError
from mamlctl.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: What installs the PostgreSQL driver (psycopg 3), named when it is missing.
POSTGRES_EXTRA = "pip install 'mamlctl[postgres]'"


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
    if parsed.drivername == "postgresql":  # SQLAlchemy's default would be psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot create the database folder {folder} (mamlctl home?): {err.strerror or err}"
            ) from None
    try:
        engine = create_engine(parsed, echo=echo)
    except ImportError as err:
        if parsed.drivername == "postgresql+psycopg":
            raise ConfigError(
                f"database URL {_redact(url)} needs the PostgreSQL driver psycopg, which is not"
                f" installed: {POSTGRES_EXTRA}"
            ) from None
        raise ConfigError(f"cannot use database URL {_redact(url)}: {err}") from None
    except SQLAlchemyError as err:
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


def _scripts() -> Any:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg)


def head_revision() -> str:
    """The newest migration revision shipped with this package."""
    head = _scripts().get_current_head()
    assert head is not None
    return str(head)


RevisionState = Literal["empty", "up to date", "behind", "newer"]


def revision_state(revision: str | None) -> RevisionState:
    """Where a database revision stands against this package's migrations: ``newer`` is a
    revision this mamlctl does not ship (a newer mamlctl migrated the database)."""
    from alembic.util import CommandError

    if revision is None:
        return "empty"
    if revision == head_revision():
        return "up to date"
    try:
        known = _scripts().get_revision(revision) is not None
    except CommandError:
        known = False
    return "behind" if known else "newer"


def _newer_error(url: str, revision: str) -> StoreError:
    return StoreError(
        f"registry database {url} is at revision {revision}, newer than this mamlctl "
        f"(head {head_revision()}): upgrade mamlctl, or point MAMLCTL_HOME elsewhere"
    )


def current_revision(target: Settings | str | Engine) -> str | None:
    """The database's Alembic revision, or None for an empty (never migrated) database."""
    from alembic.runtime.migration import MigrationContext

    engine, owned = _engine_of(target)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as err:  # unreachable server, or a file that is not a database
        verb = "reach" if isinstance(err, OperationalError) else "read"
        raise StoreError(
            f"cannot {verb} registry database {_redact(str(engine.url))}: {_first_line(err)}"
        ) from None
    finally:
        if owned:
            engine.dispose()


def upgrade_schema(target: Settings | str | Engine, revision: str = "head") -> str:
    """Run Alembic ``upgrade`` to ``revision`` programmatically; returns the new revision."""
    from alembic import command
    from alembic.util import CommandError

    engine, owned = _engine_of(target)
    try:
        before = current_revision(engine)
        if revision_state(before) == "newer":
            assert before is not None
            raise _newer_error(_redact(str(engine.url)), before)
        command.upgrade(_alembic_config(engine), revision)
        rev = current_revision(engine)
        assert rev is not None
        return rev
    except (SQLAlchemyError, CommandError) as err:
        raise StoreError(
            f"cannot migrate registry database {_redact(str(engine.url))}: {_first_line(err)}"
        ) from None
    finally:
        if owned:
            engine.dispose()


def ensure_schema(engine: Engine, *, embedded: bool, lock_path: Path | None = None) -> None:
    """Upgrade an embedded database to head; require a server database to be at head.

    ``lock_path``: a file lock held around the implicit upgrade (the state is read again
    under it), so concurrent first uses migrate once.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if revision_state(current) == "newer":
        assert current is not None
        raise _newer_error(_redact(str(engine.url)), current)
    if embedded:
        if lock_path is None:
            upgrade_schema(engine)
            return
        from mamlctl.registry.locks import file_lock

        with file_lock(lock_path, purpose="registry database migration"):
            if current_revision(engine) != head:
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
    settings: Settings, *, migrate: bool | None = None, create: bool = True
) -> Iterator[sessionmaker[Session]]:
    """Yield a session factory on a database at head; dispose the engine afterwards.

    ``migrate``: upgrade when behind. Default: only for the embedded SQLite database.
    ``create``: False for read-only commands: a missing home or embedded database is a
    :class:`NotFoundError` instead of a new, empty registry.
    """
    if settings.is_embedded_database:
        if create:
            settings.ensure_home()
        else:
            settings.require_home()
            if not settings.database_path.is_file():
                raise NotFoundError(
                    f"no registry database at {settings.database_path}: start with "
                    "`mamlctl ingest PATH` (or check MAMLCTL_HOME)"
                )
    engine = make_engine(settings)
    try:
        embedded = settings.is_embedded_database if migrate is None else migrate
        lock = settings.migration_lock_path if settings.is_embedded_database else None
        ensure_schema(engine, embedded=embedded, lock_path=lock)
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
def transaction(
    settings: Settings, *, migrate: bool | None = None, create: bool = True
) -> Iterator[Session]:
    """One command = one transaction: commit on success, roll back on any error.

    Database failures surface as :class:`StoreError` with one line; domain errors pass through.
    """
    from mamlctl.errors import MamlctlError

    with open_registry(settings, migrate=migrate, create=create) as factory:
        try:
            with factory.begin() as session:
                yield session
        except MamlctlError:
            raise
        except SQLAlchemyError as err:
            raise StoreError(f"registry database error: {_first_line(err)}") from None
