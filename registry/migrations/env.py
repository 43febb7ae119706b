"""Alembic environment of the registry database.

The database comes from, in order: an engine handed over programmatically
(``config.attributes["engine"]``, what :func:`mamlctl.registry.db.upgrade_schema` does), the
``sqlalchemy.url`` option of an ini file, else the same :class:`mamlctl.settings.Settings` every
command reads (``MAMLCTL_DATABASE_URL`` or the embedded SQLite file under ``MAMLCTL_HOME``).
"""

from __future__ import annotations

from alembic import context

from mamlctl.registry.tables import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from mamlctl.settings import Settings

    settings = Settings()
    if settings.is_embedded_database:
        settings.ensure_home()
    return settings.resolved_database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    from mamlctl.registry.db import make_engine

    engine = config.attributes.get("engine")
    owned = engine is None
    if engine is None:
        engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        if owned:
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
