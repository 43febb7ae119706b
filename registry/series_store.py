"""The registry database as the stages' :class:`~mamlctl.ports.SeriesStore`.

Each call is one transaction (:func:`mamlctl.registry.db.transaction`); rows become domain
objects before they leave this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mamlctl.domain import AdaptedModelRecord, Family, InitializerRef, NewModel, Series

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from mamlctl.settings import Settings


class SqlSeriesStore:
    """:class:`~mamlctl.ports.SeriesStore` over the registry database the settings name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def get_family(self, name: str) -> Family:
        from mamlctl.registry.db import transaction
        from mamlctl.registry.family_queries import get_family

        with transaction(self.settings) as session:
            return get_family(session, name)

    def family_series(self, name: str) -> list[Series]:
        from mamlctl.registry.db import transaction
        from mamlctl.registry.series_queries import load_family_series

        with transaction(self.settings) as session:
            return load_family_series(session, name)

    def record_initializer(self, ref: InitializerRef) -> None:
        """Record a registered version; mirror the champion when the family's alias is on it."""
        from mamlctl.registry.db import transaction
        from mamlctl.registry.family_queries import get_family, set_family_champion
        from mamlctl.registry.model_queries import record_initializer_version

        with transaction(self.settings) as session:
            record_initializer_version(
                session,
                family=ref.family,
                version=ref.version,
                run_id=ref.run_id,
                registered_model=ref.registered_model,
                source_uri=ref.source_uri,
                metrics=ref.metrics,
                created_at=ref.created_at,
            )
            if get_family(session, ref.family).alias in ref.aliases:
                set_family_champion(session, ref.family, ref.version, run_id=ref.run_id)


class SqlAdaptedModelStore:
    """:class:`~mamlctl.ports.AdaptedModelStore` over an open registry's session factory
    (:func:`mamlctl.registry.db.open_registry`); each call is one transaction."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def get_family(self, name: str) -> Family:
        from mamlctl.registry.family_queries import get_family

        with self.factory.begin() as session:
            return get_family(session, name)

    def series_ids(self, family: str) -> list[str]:
        from mamlctl.registry.series_queries import series_ids_in_family

        with self.factory.begin() as session:
            return series_ids_in_family(session, family)

    def current_models(self, family: str) -> list[AdaptedModelRecord]:
        from mamlctl.registry.model_queries import current_adapted_models

        with self.factory.begin() as session:
            return current_adapted_models(session, family)

    def note_initializer(self, ref: InitializerRef) -> None:
        from mamlctl.registry.model_queries import record_initializer_version

        with self.factory.begin() as session:
            record_initializer_version(
                session,
                family=ref.family,
                version=ref.version,
                run_id=ref.run_id,
                registered_model=ref.registered_model,
                source_uri=ref.source_uri,
            )

    def last_points(self, series_ids: Sequence[str], n: int) -> list[tuple[Any, Any]]:
        from mamlctl.registry.series_queries import last_points

        with self.factory() as session:
            return [last_points(session, sid, n) for sid in series_ids]

    def record_models(
        self,
        *,
        ref: InitializerRef,
        support: int,
        window: int,
        horizon: int,
        adapted_at: datetime,
        entries: Sequence[NewModel],
    ) -> None:
        from mamlctl.registry.bulk_models import record_models_bulk

        with self.factory.begin() as session:
            record_models_bulk(
                session,
                registered_model=ref.registered_model,
                initializer_version=ref.version,
                initializer_run_id=ref.run_id,
                support=support,
                window=window,
                horizon=horizon,
                adapted_at=adapted_at,
                entries=entries,
            )

    def referenced_model_paths(self) -> set[str]:
        from mamlctl.registry.model_queries import referenced_model_paths

        with self.factory() as session:
            return referenced_model_paths(session)
