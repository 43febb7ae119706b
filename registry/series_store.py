"""The registry database as the stages' :class:`~mamlctl.ports.SeriesStore`.

Each call is one transaction (:func:`mamlctl.registry.db.transaction`); rows become domain
objects before they leave this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mamlctl.domain import Family, InitializerRef, Series

if TYPE_CHECKING:
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
