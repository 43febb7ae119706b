"""A fresh product home and the stages a user runs in it, shared by the M4 and NAB protocols.

A home is a temporary ``MAMLCTL_HOME`` (embedded SQLite registry, embedded MLflow store with an
explicit URI, models folder). The helpers call the stages exactly as the CLI commands do:

* :func:`ingest_values`: ``mamlctl ingest`` + ``families assign`` (values with timestamps, or
  integer positions);
* :func:`train_home`: ``mamlctl train FAMILY --iterations N --seed S`` (no time budget, so the
  result depends on the seed only);
* :func:`adapt_home`: ``mamlctl adapt FAMILY --version V`` (adapt + export).

No training or adaptation code of their own: :mod:`mamlctl.stages` does the work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mamlctl.domain import Family, Series

if TYPE_CHECKING:
    from mamlctl.registry.mlflow_store import MlflowStore
    from mamlctl.settings import Settings
    from mamlctl.stages.adapt import AdaptReport
    from mamlctl.stages.train import TrainOutcome

__all__ = ["adapt_home", "home_settings", "ingest_values", "servable", "train_home"]


def home_settings(home: Path) -> Settings:
    """Settings of a fresh home with explicit URIs (an ``MLFLOW_TRACKING_URI`` or
    ``MAMLCTL_*`` in the environment must not redirect it); the home is created."""
    from mamlctl.settings import Settings

    settings = Settings(
        home=home,
        database_url=None,  # the embedded SQLite registry of the home
        tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
    )
    settings.ensure_home()
    return settings


def servable(values: np.ndarray, family: Family) -> bool:
    """A series can be served (adapted or zero-shot) once it holds one input window."""
    return int(values.shape[0]) >= family.window


def ingest_values(
    settings: Settings,
    family: Family,
    values: Mapping[str, np.ndarray],
    interval: float,
    *,
    timestamps: Mapping[str, np.ndarray] | None = None,
    source: str,
) -> None:
    """``mamlctl ingest`` + ``families assign`` of ``values`` (``timestamps[sid]`` when given,
    else integer positions); the family is created with its settings when new."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction
    from mamlctl.registry.ingest import IncomingSeries, store_series

    stamps = timestamps or {}
    incoming = [
        IncomingSeries(
            series=Series(
                series_id=sid,
                values=np.asarray(v, dtype=np.float64),
                timestamps=(
                    None
                    if sid not in stamps
                    else np.asarray(stamps[sid], dtype="datetime64[ns]").astype("datetime64[us]")
                ),
            ),
            source=source,
            interval_seconds=interval,
        )
        for sid, v in values.items()
    ]
    ready: Sequence[str] = [sid for sid, v in values.items() if servable(v, family)]
    with transaction(settings) as session:
        q.upsert_family(session, family)
        store_series(session, incoming)
        if ready:
            q.assign_family(session, family.name, list(ready))


def train_home(
    settings: Settings, family: str, *, iterations: int, seed: int
) -> tuple[TrainOutcome, MlflowStore]:
    """The train stage on the family's series, a fixed number of meta-iterations; returns
    the outcome and the home's model store."""
    from mamlctl.registry.mlflow_store import open_store
    from mamlctl.stages.api import train

    outcome = train(family, settings=settings, iterations=iterations, seed=seed, time_budget_s=None)
    return outcome, open_store(settings)


def adapt_home(
    settings: Settings,
    store: MlflowStore,
    family: str,
    series: Sequence[str],
    *,
    version: int,
    **request: Any,
) -> AdaptReport:
    """The adapt stage (adapt + export, ``adapt``'s default settings) of ``series`` from
    initializer ``version``."""
    from mamlctl.stages.adapt import AdaptRequest
    from mamlctl.stages.api import run_adaptation

    return run_adaptation(
        settings,
        store,
        AdaptRequest(family=family, series=tuple(series), version=version, **request),
    )
