"""The seams between the stages and the outside world, as Protocols.

A stage (:mod:`mamlctl.stages`) is a function over these ports; the CLI passes the real
implementations (the SQL registry, the MLflow store, the models folder) and tests or the
evaluation may pass the in-memory ones (:mod:`mamlctl.stages.memory`). Nothing here imports a
third-party package: a port names what a stage needs, not how it is done.

* :class:`SeriesStore` -- families and their series (the registry database);
* :class:`InitializerStore` -- runs, registered initializer versions and aliases (MLflow);
* :class:`RunLog` -- one open training or adaptation run (a context manager that ends the run
  FINISHED, FAILED or KILLED);
* :class:`AdaptedModelStore` -- what the adapt stage reads and records in the registry
  database (members, latest points, current adapted models, one transaction per chunk);
  :class:`AdaptInitializerStore` / :class:`AdaptRun` -- the model store as the adapt stage
  uses it (a version by URI, a run finished best effort after the rows are committed). The
  model files are the third port of the adapt stage: a folder (``models_dir``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from mamlctl.domain import (
    CHAMPION,
    AdaptedModelRecord,
    Family,
    InitializerRef,
    NewModel,
    Series,
)

T = TypeVar("T")

#: Artifact folder of a run that holds the initializer (weights + config). Versions registered
#: before the pyfunc flavor have ``runs:/<run_id>/initializer`` as their source; later ones the
#: run's MLflow Model folder (:data:`MODEL_ARTIFACT`), which holds the same folder as its
#: ``initializer`` artifact.
INITIALIZER_ARTIFACT = "initializer"
#: Artifact folder of a training run that holds the initializer as an MLflow Model (pyfunc).
MODEL_ARTIFACT = "model"


class RunLog(Protocol):
    """An open run: parameters, step metrics, artifacts; the run ends when the block exits."""

    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_config(self, config: Any, *, prefix: str = "") -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None: ...

    def log_artifact(self, local_path: Path, *, artifact_path: str | None = None) -> None: ...

    def log_artifacts(self, local_dir: Path, *, artifact_path: str | None = None) -> None: ...

    def log_json(self, obj: Any, *, artifact_file: str) -> None: ...

    def log_dataset(
        self, frame: Any, *, name: str, digest: str | None = None, context: str = "training"
    ) -> None:
        """Record a (pandas) frame as a dataset input of the run."""
        ...

    def __enter__(self) -> RunLog: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class InitializerStore(Protocol):
    """What the training and adaptation stages need from a model store."""

    def start_run(
        self, *, family: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> RunLog: ...

    def register_initializer(
        self,
        *,
        family: str,
        run_id: str,
        tags: Mapping[str, Any],
        description: str,
        promote: bool = False,
        eligible: bool = True,
        artifact_path: str = INITIALIZER_ARTIFACT,
    ) -> InitializerRef:
        """Register the run's initializer as a new version. The first version of a family
        becomes champion, later ones challenger unless ``promote``; a version that is not
        ``eligible`` (it lost to the baseline on its own held-out series) never becomes
        champion automatically: it is registered as challenger."""
        ...

    def set_alias(self, *, family: str, version: int, alias: str = CHAMPION) -> InitializerRef: ...

    def resolve_alias(self, family: str, alias: str = CHAMPION) -> InitializerRef: ...

    def load(self, model: str | InitializerRef, *, loader: Callable[[Path], T]) -> T: ...


class SeriesStore(Protocol):
    """Families, their series and the initializer versions recorded for them."""

    def get_family(self, name: str) -> Family:
        """The family, or :class:`~mamlctl.errors.NotFoundError` naming it."""
        ...

    def family_series(self, name: str) -> list[Series]:
        """Every series of the family with its points, in ingest order."""
        ...

    def record_initializer(self, ref: InitializerRef) -> None:
        """Record a registered version (and mirror the champion when its alias is served)."""
        ...


class AdaptRun(RunLog, Protocol):
    """An adaptation run: it also ends best effort once the job's rows are committed."""

    #: RUNNING runs of dead processes that were ended KILLED before this one started.
    stale_ended: tuple[str, ...]

    def finish_best_effort(self, log: Callable[[Any], None]) -> str | None:
        """``log(self)``, then FINISHED, none of which may fail the caller; None, or one line
        saying what did not reach the store."""
        ...


class AdaptInitializerStore(Protocol):
    """What the adapt stage needs from a model store."""

    def start_run(
        self, *, family: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> AdaptRun: ...

    def resolve(self, model: str | InitializerRef) -> InitializerRef:
        """A version from ``models:/<registered model>/<version>`` (or a ref, unchanged)."""
        ...

    def resolve_alias(self, family: str, alias: str = CHAMPION) -> InitializerRef: ...

    def load(self, model: str | InitializerRef, *, loader: Callable[[Path], T]) -> T: ...


class AdaptedModelStore(Protocol):
    """What the adapt stage reads and records: each call is one transaction."""

    def get_family(self, name: str) -> Family: ...

    def series_ids(self, family: str) -> list[str]:
        """Ids of the family's series, in ingest order."""
        ...

    def current_models(self, family: str) -> list[AdaptedModelRecord]: ...

    def note_initializer(self, ref: InitializerRef) -> None:
        """Record the version a job adapts from (idempotent; the champion mirror is not
        touched)."""
        ...

    def last_points(self, series_ids: Sequence[str], n: int) -> list[tuple[Any, Any]]:
        """Per series, in order: its last ``n`` values and their positions (arrays)."""
        ...

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
        """Record one chunk's models: each becomes its series' current one, all or none. A
        series whose current model is already this job's (same initializer version and
        ``adapted_at``: a retried chunk) is skipped, so a job records each series once."""
        ...

    def referenced_model_paths(self) -> set[str]:
        """Relative paths of every model file a row points at (current and history)."""
        ...
