"""A throw-away PostgreSQL database for benchmarks (created fresh, dropped afterwards)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

HOST, PORT = "127.0.0.1", 5432


@contextmanager
def scratch_database(prefix: str = "mamlctl_bench") -> Iterator[str | None]:
    """Yield a URL of a fresh database, or None when no server answers."""
    import psycopg

    conn = None
    for user in ("postgres", "root"):
        try:
            conn = psycopg.connect(
                host=HOST, port=PORT, user=user, dbname="test", autocommit=True, connect_timeout=3
            )
            break
        except psycopg.OperationalError:
            continue
    if conn is None:
        yield None
        return
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{HOST}:{PORT}/{name}"
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()
