"""The edges of ``mamlctl watch``: the registry database says what serves, the adaptation job
re-adapts, the MLflow store resolves aliases. The loop itself is
:class:`mamlctl.registry.promotion_watch.WatchLoop`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mamlctl.domain import InitializerRef

if TYPE_CHECKING:
    from mamlctl.maml.adaptation import AdaptConfig
    from mamlctl.registry.mlflow_store import MlflowStore
    from mamlctl.settings import Settings
    from mamlctl.stages.adapt import AdaptReport

#: One chunk for the whole family: the job records a chunk's rows in one transaction, so a
#: failure anywhere leaves every series on its previous model (no half-promoted family).
WHOLE_FAMILY_CHUNK = 1_000_000


def served_initializer(settings: Settings, family: str) -> tuple[str, int] | None:
    """(MLflow run id, version) of the initializer every current adapted model of ``family``
    came from; None when the family has no current model or its series are on different
    initializers. The run id is the identity (a re-created registered model repeats versions)."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry

    with open_registry(settings) as factory, factory() as session:
        served = {
            (r.initializer_run_id, r.initializer_version)
            for r in q.current_adapted_models(session, family)
        }
    return served.pop() if len(served) == 1 else None


def served_version(settings: Settings, family: str) -> int | None:
    """The version number of :func:`served_initializer` (for messages: not an identity)."""
    served = served_initializer(settings, family)
    return served[1] if served is not None else None


def watched_families(settings: Settings, only: tuple[str, ...] = ()) -> list[str]:
    """``only`` after checking each exists, else every family in the registry database."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry

    with open_registry(settings) as factory, factory() as session:
        if only:
            return [q.get_family(session, name).name for name in only]  # NotFoundError
        return [f.name for f in q.list_families(session)]


class AdaptingFollower:
    """:class:`~mamlctl.registry.promotion_watch.Follower` on the adaptation job.

    ``store`` is a callable so the follower always uses the loop's current connection (the
    loop reconnects after an outage).
    """

    def __init__(
        self,
        settings: Settings,
        store: Callable[[], MlflowStore],
        *,
        config: AdaptConfig | None = None,
        on_report: Callable[[AdaptReport], None] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._config = config
        self._on_report = on_report

    def served(self, family: str) -> tuple[str, int] | None:
        return served_initializer(self._settings, family)

    def readapt(self, family: str, ref: InitializerRef) -> int:
        from mamlctl.maml.adaptation import AdaptConfig
        from mamlctl.registry.db import transaction
        from mamlctl.registry.family_queries import set_family_champion
        from mamlctl.stages.adapt import AdaptRequest
        from mamlctl.stages.api import run_adaptation

        # Exactly the version the alias pointed at when polled (not "the alias now").
        request = AdaptRequest(family=family, version=ref.version, chunk_series=WHOLE_FAMILY_CHUNK)
        report = run_adaptation(
            self._settings, self._store(), request, self._config or AdaptConfig()
        )
        with transaction(self._settings) as session:
            set_family_champion(session, family, ref.version, run_id=ref.run_id)
        if self._on_report is not None:
            self._on_report(report)
        return int(report.adapted) + int(report.up_to_date)

    def refresh(self, family: str, ref: InitializerRef, older_than_s: float) -> int:
        from datetime import timedelta

        from mamlctl.maml.adaptation import AdaptConfig
        from mamlctl.stages.adapt import AdaptRequest
        from mamlctl.stages.api import run_adaptation

        request = AdaptRequest(
            family=family,
            version=ref.version,
            stale_after=timedelta(seconds=older_than_s),
            chunk_series=WHOLE_FAMILY_CHUNK,
        )
        report = run_adaptation(
            self._settings, self._store(), request, self._config or AdaptConfig()
        )
        if self._on_report is not None:
            self._on_report(report)
        return int(report.adapted) + int(report.zero_shot)
