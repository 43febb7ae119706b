"""The registry's query API in one import. Every function takes the caller's ``Session``, never
commits, and returns plain domain objects (``mamlctl.domain``) or numpy arrays::

    from mamlctl.registry.db import open_registry
    from mamlctl.registry import queries as q

    with open_registry(settings) as Session, Session.begin() as session:
        values, positions = q.last_points(session, "H1", 512)
"""

from __future__ import annotations

from mamlctl.registry.family_queries import (
    find_family,
    get_family,
    list_families,
    set_family_champion,
    upsert_family,
    validate_family,
)
from mamlctl.registry.model_queries import (
    adapted_model_history,
    current_adapted_model,
    current_adapted_models,
    get_initializer_version,
    list_initializer_versions,
    record_adapted_model,
    record_initializer_version,
)
from mamlctl.registry.series_queries import (
    assign_family,
    count_points,
    count_series,
    delete_series,
    get_series,
    last_points,
    list_series,
    load_family_series,
    load_many_series,
    load_series,
    record_detection,
    series_ids_in_family,
    series_values,
)
from mamlctl.registry.status_queries import FamilyStatus, registry_status

__all__ = [
    "FamilyStatus",
    "adapted_model_history",
    "assign_family",
    "count_points",
    "count_series",
    "current_adapted_model",
    "current_adapted_models",
    "delete_series",
    "find_family",
    "get_family",
    "get_initializer_version",
    "get_series",
    "last_points",
    "list_families",
    "list_initializer_versions",
    "list_series",
    "load_family_series",
    "load_many_series",
    "load_series",
    "record_adapted_model",
    "record_detection",
    "record_initializer_version",
    "registry_status",
    "series_ids_in_family",
    "series_values",
    "set_family_champion",
    "upsert_family",
    "validate_family",
]
