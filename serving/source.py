"""Model sources: where the server learns which adapted model serves each series.

A source answers two questions: a cheap :meth:`~ModelSource.fingerprint` that changes whenever
the set of current adapted models changes (the hot-reload poll asks it every few seconds), and
:meth:`~ModelSource.current`, the full list of current records (asked only when the fingerprint
moved). :class:`RegistrySource` reads the registry database; :class:`StaticSource` holds a list
in memory (tests, benchmarks, embedding).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mamlctl.domain import AdaptedModelRecord
from mamlctl.errors import StoreError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from mamlctl.settings import Settings


class ModelSource(Protocol):
    """What the server loads. Both methods may block; the server calls them off the loop."""

    @property
    def models_dir(self) -> Path: ...

    def fingerprint(self) -> str: ...

    def current(self) -> list[AdaptedModelRecord]: ...

    def close(self) -> None: ...


class StaticSource:
    """An in-memory list of records; :meth:`replace` swaps it (thread-safe)."""

    def __init__(self, records: Sequence[AdaptedModelRecord], *, models_dir: Path) -> None:
        self._models_dir = Path(models_dir)
        self._lock = threading.Lock()
        self._records = list(records)

    @property
    def models_dir(self) -> Path:
        return self._models_dir

    def replace(self, records: Sequence[AdaptedModelRecord]) -> None:
        with self._lock:
            self._records = list(records)

    def fingerprint(self) -> str:
        with self._lock:
            records = list(self._records)
        digest = hashlib.sha256()
        for rec in records:
            digest.update(f"{rec.series_id}\0{rec.sha256}\0{rec.path}\n".encode())
        return digest.hexdigest()

    def current(self) -> list[AdaptedModelRecord]:
        with self._lock:
            return list(self._records)

    def close(self) -> None:
        return None


class RegistrySource:
    """The registry database's current adapted models (``adapted_models.is_current``).

    The fingerprint is one aggregate query: count, max id and max ``adapted_at`` of the current
    rows (a replacement flips one row and inserts a higher id, so any recorded change moves it).
    """

    def __init__(self, settings: Settings, *, engine: Engine | None = None) -> None:
        from mamlctl.registry.db import make_engine

        self._settings = settings
        self._owned = engine is None
        self._engine = engine if engine is not None else make_engine(settings)

    @property
    def models_dir(self) -> Path:
        return self._settings.models_dir

    @property
    def engine(self) -> Engine:
        """The registry database's engine (the observe loop writes through it)."""
        return self._engine

    def fingerprint(self) -> str:
        from sqlalchemy import func, select
        from sqlalchemy.exc import SQLAlchemyError

        from mamlctl.registry.tables import AdaptedModelRow

        stmt = select(
            func.count(AdaptedModelRow.id),
            func.max(AdaptedModelRow.id),
            func.max(AdaptedModelRow.adapted_at),
        ).where(AdaptedModelRow.is_current.is_(True))
        try:
            with self._engine.connect() as conn:
                count, max_id, max_at = conn.execute(stmt).one()
        except SQLAlchemyError as err:
            raise StoreError(f"registry database unreachable: {_first_line(err)}") from None
        return f"{count}:{max_id}:{max_at}"

    def current(self) -> list[AdaptedModelRecord]:
        from sqlalchemy.exc import SQLAlchemyError

        from mamlctl.registry.model_queries import current_adapted_models_on

        try:
            with self._engine.connect() as conn:
                records: list[AdaptedModelRecord] = current_adapted_models_on(conn)
                return records
        except SQLAlchemyError as err:
            raise StoreError(f"registry database unreachable: {_first_line(err)}") from None

    def close(self) -> None:
        if self._owned:
            self._engine.dispose()


def _first_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None) or err
    return " ".join(str(orig).split())[:300]
